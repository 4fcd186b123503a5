"""Stage relays: a town-hall stage's publishers carried to the other nodes that have viewers of it.

A stage publisher's media arrives on the node that holds its peer connection: that node is the *origin* of its
tracks. Another node with viewers (an *edge*) takes ONE relay of the stage from each origin: a TCP connection
that carries the publishers' RTP as the origin already has it decrypted (nothing is decoded or re-encoded), their
sender reports, and the layout (which publishers and tracks exist, what they are called). On the edge the
relayed tracks are publishers of the local stage (``MediaHub.add_relayed_publisher``), so the edge's viewers are
served by the ordinary forwarding code, their keyframe requests merged by ``Inbound.request_keyframe`` and sent
upstream as one request per ``keyframe_interval``. On the origin a relay is one more leg of each publisher track
(:class:`RelayLeg`): its keyframe requests go through the same merge, so N edges still make at most about two
PLIs a second at the publisher, and its bitrate (the edge's aggregated REMB, one estimate a second) counts as one
viewer's in the stage's aggregate.

Wire format: frames of ``length (4 bytes, big endian) | type (1 byte) | body``, ``length`` counting type and
body, at most :data:`MAX_FRAME`. Handshake (mutual, HMAC-SHA-256 under the installation's relay key):

    origin -> edge  CHALLENGE  32 random bytes
    edge -> origin  HELLO      JSON {"room", "node", "nonce": hex, "mac": hex(HMAC(key, "edge" challenge room node))}
    origin -> edge  WELCOME    hex(HMAC(key, "origin" nonce room)), or REFUSED with a reason, then close

Then origin -> edge: LAYOUT (JSON), RTP (track id u16 | packet), SR (track id | NTP u64 | RTP ts | packets |
octets), PING (every second); edge -> origin: KEYFRAME (track id), BITRATE (track id | bit/s u32), PING (the
answer to each of the origin's: an edge silent for :data:`SILENCE_LIMIT` seconds is dropped by the origin).

Faults: the edge drops its relay when its last local stage member has been gone for ``linger`` seconds
(unless the stage is recorded here), or when its stage closes; the origin drops a relay whose connection dies
(its legs are detached at once); the edge drops the relayed publishers when the connection dies or stays
silent for :data:`SILENCE_LIMIT` seconds, and its signaling sends its viewers the layout without them. An
edge that cannot keep up (the origin's send buffer past :data:`MAX_BUFFER`) loses packets, never delays the
origin's event loop. A relayed publisher is recorded where the stage is recorded, like a local one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

from .forwarding import Counters, Inbound, RelayedLink

if TYPE_CHECKING:
    from .hub import MediaHub

logger = logging.getLogger(__name__)

FRAME = struct.Struct("!IB")
TRACK = struct.Struct("!H")
SENDER_REPORT = struct.Struct("!HQIII")
BITRATE = struct.Struct("!HI")

CHALLENGE, HELLO, WELCOME, REFUSED = b"C"[0], b"H"[0], b"W"[0], b"X"[0]
LAYOUT, RTP, SR, PING = b"L"[0], b"R"[0], b"S"[0], b"P"[0]
KEYFRAME, REMB = b"K"[0], b"B"[0]

MAX_FRAME = 64 * 1024
"""Largest frame accepted (an RTP packet is at most 1,500 bytes; a layout of a few publishers a few KB)."""
MAX_BUFFER = 1 << 20
"""Bytes an origin lets wait in a relay's send buffer before it drops packets for that edge."""
HANDSHAKE_TIMEOUT = 5.0
"""Seconds for the whole handshake, on both sides."""
PING_INTERVAL = 1.0
SILENCE_LIMIT = 5.0
"""An edge that hears nothing (not even a ping) for this long takes the origin for gone."""
MAX_HELLO = 1024
"""Largest frame read before the edge has proved the key (its hello is about 250 bytes)."""
MAX_RELAYS_PER_STAGE = 64
"""Edges one origin serves per stage (a bound: each costs one send per packet)."""


class RelayRefused(Exception):
    """The other side refused the relay or broke the handshake."""


def _mac(key: bytes, *parts: str | bytes) -> str:
    message = b"\0".join(p.encode() if isinstance(p, str) else p for p in parts)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def frame(kind: int, body: bytes) -> bytes:
    return FRAME.pack(len(body) + 1, kind) + body


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> tuple[int, bytes]:
    length, kind = FRAME.unpack(await reader.readexactly(FRAME.size))
    if not 1 <= length <= limit:
        raise RelayRefused(f"frame of {length} bytes")
    return kind, await reader.readexactly(length - 1)


# -- origin ------------------------------------------------------------------------------------------------


class RelayLeg:
    """One publisher track as an edge receives it: a leg of the origin's ``Inbound`` (forwarding.Leg)."""

    __slots__ = ("relay", "track", "prefix", "source", "remb")

    def __init__(self, relay: OriginRelay, track: int, source: Inbound) -> None:
        self.relay = relay
        self.track = track
        self.prefix = TRACK.pack(track)
        self.source: Inbound | None = source
        self.remb: int | None = None
        "The edge's aggregated estimate for this track (bit/s)."

    def forward(
        self, data: bytes, payload: bytes, seq: int, ts: int, offset: int, abs3: bytes, level: bytes | None
    ) -> None:
        self.relay.write(RTP, self.prefix + data)

    def send_sender_report(self, info: RtcpSenderInfo) -> None:
        self.relay.write(
            SR,
            SENDER_REPORT.pack(
                self.track, info.ntp_timestamp, info.rtp_timestamp, info.packet_count, info.octet_count
            ),
        )

    def detach(self) -> None:
        source = self.source
        if source is not None and self in source.legs:
            source.legs.remove(self)


class OriginRelay:
    """The origin's end of one relay: this node's publishers of one stage, sent to one edge."""

    def __init__(self, hub: MediaHub, room_id: str, edge: str, writer: asyncio.StreamWriter) -> None:
        self.hub = hub
        self.room_id = room_id
        self.edge = edge
        self.writer = writer
        self.legs: dict[tuple[str, str], RelayLeg] = {}
        self._next_track = 1
        self._layout = b""
        self.dropped = 0
        self.keyframe_requests = 0
        "KEYFRAME frames received from the edge (each went through the publisher's merge)."
        self.closed = False
        self._unwatch = hub.watch_stage(room_id, self.sync)

    def write(self, kind: int, body: bytes) -> None:
        transport = self.writer.transport
        if self.closed or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_BUFFER:
            self.dropped += 1
            return
        transport.write(frame(kind, body))

    def sync(self) -> None:
        """Attach a leg to every local publisher track, detach the gone ones, send the layout if it changed."""
        if self.closed:
            return
        if not self.hub.is_stage(self.room_id):
            self.close()
            return
        publishers = self.hub.local_publishers(self.room_id)
        wanted = {(pid, kind): inbound for pid, tracks in publishers.items() for kind, inbound in tracks.items()}
        for key, leg in list(self.legs.items()):
            if wanted.get(key) is not leg.source:
                leg.detach()
                del self.legs[key]
        for key, inbound in wanted.items():
            if key not in self.legs:
                leg = RelayLeg(self, self._next_track, inbound)
                self._next_track = self._next_track % 0xFFFF + 1
                inbound.legs.append(leg)
                self.legs[key] = leg
        layout = {
            "publishers": [
                {
                    "id": pid,
                    "label": self.hub.label(self.room_id, pid),
                    "tracks": [
                        {
                            "t": self.legs[(pid, kind)].track,
                            "kind": kind,
                            "ssrc": inbound.ssrc,
                            "pt": inbound.payload_type,
                            "clock": inbound.clock_rate,
                            "level": inbound.audio_level_id,
                        }
                        for kind, inbound in sorted(tracks.items())
                    ],
                }
                for pid, tracks in sorted(publishers.items())
            ]
        }
        encoded = json.dumps(layout, sort_keys=True).encode()
        if encoded != self._layout:
            self._layout = encoded
            self.write(LAYOUT, encoded)

    def received(self, kind: int, body: bytes) -> None:
        if kind == KEYFRAME and len(body) >= TRACK.size:
            (track,) = TRACK.unpack_from(body)
            leg = self._leg(track)
            if leg is not None and leg.source is not None:
                self.keyframe_requests += 1
                leg.source.request_keyframe()
        elif kind == REMB and len(body) >= BITRATE.size:
            track, bitrate = BITRATE.unpack_from(body)
            leg = self._leg(track)
            if leg is not None:
                leg.remb = bitrate

    def _leg(self, track: int) -> RelayLeg | None:
        return next((leg for leg in self.legs.values() if leg.track == track), None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._unwatch()
        for leg in self.legs.values():
            leg.detach()
        self.legs.clear()
        self.writer.close()


# -- edge --------------------------------------------------------------------------------------------------


class RelayedInbound(Inbound):
    """A publisher track on an edge: fed by the relay; its keyframe requests (already merged by
    ``request_keyframe``) and its aggregated bitrate go upstream over the relay, not as RTCP."""

    def __init__(self, relay: EdgeRelay, track: int, **kwargs: Any) -> None:
        super().__init__(RelayedLink(), relay.counters, **kwargs)
        self.relay = relay
        self.track = track
        self.prefix = TRACK.pack(track)

    def _send_pli(self, now: float) -> None:
        self.last_keyframe_request = now
        self.keyframe_requests += 1
        self.counters.keyframe_requests += 1
        self.relay.write(KEYFRAME, self.prefix)

    def send_nack(self, lost: list[int]) -> None:
        """Nothing to ask: TCP lost nothing, and the origin repairs its own uplink (a repaired packet comes late
        and is forwarded then). A gap nobody fills makes the viewers' decoders ask for a keyframe."""

    def remb_packet(self, bitrate: int) -> bytes | None:
        if self.video:
            self.relay.write(REMB, BITRATE.pack(self.track, max(0, min(int(bitrate), 0xFFFFFFFF))))
        return None


class EdgeRelay:
    """The edge's end of one relay: one origin's publishers of one stage, shown on this node's stage."""

    def __init__(
        self,
        hub: MediaHub,
        room_id: str,
        origin: str,
        keyframe_interval: float,
        on_layout: Callable[[str], None] | None = None,
        linger: float = 1.0,
    ) -> None:
        self.hub = hub
        self.room_id = room_id
        self.origin = origin
        self.keyframe_interval = keyframe_interval
        self.on_layout = on_layout
        self.linger = linger
        self.counters = Counters()
        self.tracks: dict[int, RelayedInbound] = {}
        self.publishers: dict[str, tuple[int, ...]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self._unwatch: Callable[[], None] | None = None
        self._linger: asyncio.TimerHandle | None = None

    async def connect(self, host: str, port: int, key: bytes, node: str) -> None:
        """Open and authenticate the relay, then read it in a task until it ends."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), HANDSHAKE_TIMEOUT)
        try:
            await asyncio.wait_for(self._handshake(reader, writer, key, node), HANDSHAKE_TIMEOUT)
        except BaseException:
            writer.close()
            raise
        self.writer = writer
        self._unwatch = self.hub.watch_stage(self.room_id, self._check)
        self.task = asyncio.create_task(self._run(reader), name=f"stage-relay-{self.room_id}")

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes,
                         node: str) -> None:
        kind, challenge = await read_frame(reader)
        if kind != CHALLENGE:
            raise RelayRefused("no challenge")
        nonce = secrets.token_hex(16)
        hello = {"room": self.room_id, "node": node, "nonce": nonce,
                 "mac": _mac(key, "edge", challenge, self.room_id, node)}
        writer.write(frame(HELLO, json.dumps(hello).encode()))
        kind, body = await read_frame(reader)
        if kind == REFUSED:
            raise RelayRefused(body.decode(errors="replace"))
        if kind != WELCOME or not hmac.compare_digest(body, _mac(key, "origin", nonce, self.room_id).encode()):
            raise RelayRefused("the origin did not prove the installation key")

    def write(self, kind: int, body: bytes) -> None:
        writer = self.writer
        if writer is not None and not writer.transport.is_closing():
            writer.transport.write(frame(kind, body))

    async def _run(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                async with asyncio.timeout(SILENCE_LIMIT):  # cheaper per packet than wait_for (no task)
                    kind, body = await read_frame(reader)
                if kind == RTP:
                    (track,) = TRACK.unpack_from(body)
                    inbound = self.tracks.get(track)
                    if inbound is not None:
                        packet = body[TRACK.size:]
                        if inbound.ssrc is None and len(packet) >= 12:  # the publisher announced none: learnt
                            inbound.ssrc = int.from_bytes(packet[8:12], "big")
                        inbound.receive(packet)
                elif kind == SR:
                    track, ntp, rtp_ts, packets, octets = SENDER_REPORT.unpack_from(body)
                    inbound = self.tracks.get(track)
                    if inbound is not None and inbound.ssrc is not None:
                        info = RtcpSenderInfo(ntp_timestamp=ntp, rtp_timestamp=rtp_ts, packet_count=packets,
                                              octet_count=octets)
                        inbound.on_sender_report(RtcpSrPacket(ssrc=inbound.ssrc, sender_info=info))
                elif kind == LAYOUT:
                    self._layout(json.loads(body))
                elif kind == PING:
                    self.write(PING, b"")  # answered: the origin takes a silent edge for gone
                    if self._linger is None:
                        self._check()  # once a second: a recording that ended here is no stage change
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, RelayRefused, OSError) as e:
            logger.info("stage relay of %s from %s ended: %s", self.room_id, self.origin, type(e).__name__)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("stage relay of %s failed", self.room_id)
        finally:
            self._teardown()

    def _layout(self, layout: dict[str, Any]) -> None:
        wanted: dict[str, dict[str, Any]] = {p["id"]: p for p in layout.get("publishers", [])}
        changed = False
        for pid in list(self.publishers):
            tracks = tuple(t["t"] for t in wanted[pid]["tracks"]) if pid in wanted else None
            if tracks != self.publishers[pid]:
                self._remove(pid)
                changed = True
        for pid, publisher in wanted.items():
            label = {str(k): str(v) for k, v in (publisher.get("label") or {}).items()}
            if pid in self.publishers:
                if label and self.hub.label(self.room_id, pid) != label:
                    self.hub.set_label(self.room_id, pid, label)
                    changed = True
                continue
            made = [
                RelayedInbound(
                    self, int(t["t"]), kind=str(t["kind"]), ssrc=t["ssrc"], payload_type=int(t["pt"]),
                    clock_rate=int(t["clock"]), audio_level_id=t["level"], keyframe_interval=self.keyframe_interval,
                )
                for t in publisher["tracks"]
            ]
            if label:
                self.hub.set_label(self.room_id, pid, label)
            if self.hub.add_relayed_publisher(self.room_id, pid, {t.kind: t for t in made}):
                self.tracks.update((t.track, t) for t in made)
                self.publishers[pid] = tuple(t.track for t in made)
                changed = True
            else:
                logger.warning("stage relay of %s: a relayed publisher is connected here too; not shown twice",
                               self.room_id)
        if changed and self.on_layout is not None:
            self.on_layout(self.room_id)

    def _remove(self, pid: str) -> None:
        for track in self.publishers.pop(pid, ()):
            inbound = self.tracks.pop(track, None)
            if inbound is not None:
                inbound.cancel_trailing()
        self.hub.remove_relayed_publisher(self.room_id, pid)

    def _check(self) -> None:
        """The local stage changed: without local members for ``linger`` seconds, the relay goes."""
        if not self.hub.is_stage(self.room_id):
            self.close()
            return
        if self._needed():
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
        elif self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self.linger, self._idle)

    def _needed(self) -> bool:
        """Viewers (or publishers) here, or the stage recorded here: the relay's tracks are used."""
        return self.hub.local_members(self.room_id) > 0 or self.hub.recorder(self.room_id) is not None

    def _idle(self) -> None:
        self._linger = None
        if not self._needed():
            logger.info("stage relay of %s: no viewer left here, relay dropped", self.room_id)
            self.close()

    def close(self) -> None:
        self._teardown()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _teardown(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._unwatch is not None:
            self._unwatch()
        if self.writer is not None:
            self.writer.close()
        had = bool(self.publishers)
        for pid in list(self.publishers):
            self._remove(pid)
        if had and self.on_layout is not None:
            self.on_layout(self.room_id)


# -- one node's relays ---------------------------------------------------------------------------------------


class StageRelays:
    """This node's relays, both ends: the listener serving its publishers to edges, and the relays it takes.

    :param key: the installation's relay key (every node must have the same).
    :param on_layout: called ``(room_id)`` when relayed publishers appear or go (signaling re-sends layouts).
    """

    def __init__(self, hub: MediaHub, key: bytes, node_id: str, *, keyframe_interval: float = 0.5,
                 linger: float = 1.0, on_layout: Callable[[str], None] | None = None) -> None:
        self.hub = hub
        self.key = key
        self.node_id = node_id
        self.keyframe_interval = keyframe_interval
        self.linger = linger
        self.on_layout = on_layout
        self.served: dict[str, list[OriginRelay]] = {}
        "Relays this node serves as origin, by stage."
        self.taken: dict[tuple[str, str], EdgeRelay] = {}
        "Relays this node takes as edge, by (stage, origin node)."
        self._server: asyncio.Server | None = None
        self._connecting: dict[tuple[str, str], asyncio.Task[EdgeRelay | None]] = {}
        self._failed: dict[tuple[str, str], float] = {}

    # -- origin --
    async def serve(self, host: str, port: int = 0) -> tuple[str, int]:
        """Listen for edges; returns the address bound (port 0: one the system picks)."""
        self._server = await asyncio.start_server(self._accept, host, port)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay: OriginRelay | None = None
        try:
            room, edge = await asyncio.wait_for(self._welcome(reader, writer), HANDSHAKE_TIMEOUT)
            relay = OriginRelay(self.hub, room, edge, writer)
            self.served.setdefault(room, []).append(relay)
            logger.info("stage relay of %s to an edge opened (%d)", room, len(self.served[room]))
            relay.sync()
            ping = asyncio.create_task(self._ping(relay))
            try:
                while not relay.closed:
                    # The edge answers every ping: an edge silent this long is gone (power, network), and its
                    # leg must not hold a slot nor cap the publishers' bitrate with its last estimate.
                    async with asyncio.timeout(SILENCE_LIMIT):
                        kind, body = await read_frame(reader)
                    relay.received(kind, body)
            finally:
                ping.cancel()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, RelayRefused, OSError, ValueError,
                RecursionError) as e:  # RecursionError: a hello nested too deep for json.loads
            logger.info("stage relay to an edge ended: %s", type(e).__name__)
        except asyncio.CancelledError:
            pass
        finally:
            if relay is not None:
                relay.close()
                relays = self.served.get(relay.room_id, [])
                if relay in relays:
                    relays.remove(relay)
                if not relays:
                    self.served.pop(relay.room_id, None)
            writer.close()

    async def _welcome(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[str, str]:
        challenge = secrets.token_bytes(32)
        writer.write(frame(CHALLENGE, challenge))
        kind, body = await read_frame(reader, MAX_HELLO)  # before authentication: small
        if kind != HELLO:
            raise RelayRefused("no hello")
        hello = json.loads(body)
        if not isinstance(hello, dict):
            raise RelayRefused("a hello that is no object")
        room, node, nonce, mac = (str(hello.get(k, "")) for k in ("room", "node", "nonce", "mac"))
        if not hmac.compare_digest(mac.encode(), _mac(self.key, "edge", challenge, room, node).encode()):
            writer.write(frame(REFUSED, b"not authenticated"))
            raise RelayRefused("an edge did not prove the installation key")
        if not self.hub.is_stage(room):
            writer.write(frame(REFUSED, b"no such stage here"))
            raise RelayRefused("no such stage")
        if len(self.served.get(room, ())) >= MAX_RELAYS_PER_STAGE:
            writer.write(frame(REFUSED, b"too many relays"))
            raise RelayRefused("too many relays")
        writer.write(frame(WELCOME, _mac(self.key, "origin", nonce, room).encode()))
        return room, node

    @staticmethod
    async def _ping(relay: OriginRelay) -> None:
        while not relay.closed:
            await asyncio.sleep(PING_INTERVAL)
            relay.write(PING, b"")

    # -- edge --
    async def pull(self, room_id: str, origin: str, address: str) -> EdgeRelay | None:
        """Take the stage's relay from ``origin`` (``host:port``) unless taken already; None if it failed
        (then it is not tried again for ``retry`` seconds). Concurrent calls share one attempt."""
        key = (room_id, origin)
        relay = self.taken.get(key)
        if relay is not None and not relay.closed.is_set():
            return relay
        if time.monotonic() < self._failed.get(key, 0.0):
            return None
        task = self._connecting.get(key)
        if task is None:
            task = asyncio.ensure_future(self._open(room_id, origin, address))
            self._connecting[key] = task
            task.add_done_callback(lambda _: self._connecting.pop(key, None))
        return await asyncio.shield(task)

    async def _open(self, room_id: str, origin: str, address: str) -> EdgeRelay | None:
        key = (room_id, origin)
        host, _, port = address.rpartition(":")
        relay = EdgeRelay(self.hub, room_id, origin, self.keyframe_interval, self.on_layout, self.linger)
        try:
            await relay.connect(host.strip("[]"), int(port), self.key, self.node_id)
        except (OSError, TimeoutError, RelayRefused, asyncio.IncompleteReadError, ValueError) as e:
            logger.warning("stage relay of %s from node %s failed: %s", room_id, origin, e)
            self._failed[key] = time.monotonic() + 1.0
            return None
        self.taken[key] = relay
        logger.info("stage relay of %s from node %s taken", room_id, origin)

        def forget() -> None:
            if self.taken.get(key) is relay:
                del self.taken[key]

        assert relay.task is not None
        relay.task.add_done_callback(lambda _: forget())
        relay._check()  # nobody local any more (left while connecting): lingers, then goes
        return relay

    def drop(self, room_id: str, origin: str) -> None:
        relay = self.taken.get((room_id, origin))
        if relay is not None:
            relay.close()

    def relays_taken(self, room_id: str) -> list[EdgeRelay]:
        return [r for (room, _), r in self.taken.items() if room == room_id and not r.closed.is_set()]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for served in list(self.served.values()):
            for origin_end in list(served):
                origin_end.close()
        tasks = [r.task for r in self.taken.values() if r.task is not None]
        for relay in list(self.taken.values()):
            relay.close()
        for task in list(self._connecting.values()):
            task.cancel()
        await asyncio.gather(*tasks, *self._connecting.values(), return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
