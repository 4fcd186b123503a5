"""MediaHub: rooms of participants, one peer connection each, media forwarded between them.

The hub knows nothing of queues or tickets: the signaling layer tells it who is
in which room (``handle_offer``, ``leave``) and whether media flows
(``set_forwarding``). See docs/media.md for the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import pylibsrtp
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)
from aiortc.sdp import SessionDescription

from . import aiortc_glue
from .broadcast import (
    PUBLISHER,
    ROLES,
    VIEWER,
    NotOnStage,
    Stage,
    StagePolicy,
    StageStats,
    UnknownStage,
    ViewerHealth,
    aggregate_remb,
    judge_viewer,
)
from .errors import UnknownParticipant, UnsupportedOffer
from .forwarding import Counters, Inbound, OutTrack, PeerLink, RelayedLink, receiver_report_packet
from .recorder import DEFAULT_QUEUE_SIZE, RoomRecorder
from .rtp_bytes import ABS_SEND_TIME_URI, AUDIO_LEVEL_URI, MID_URI
from .stats import HubCounters, ParticipantStats, RemoteSlot, TrackStats

logger = logging.getLogger(__name__)

CODEC_FOR_KIND = {"audio": "audio/opus", "video": "video/VP8"}
EXTENSION_NAMES = {MID_URI: "mid", ABS_SEND_TIME_URI: "abs-send-time", AUDIO_LEVEL_URI: "audio-level"}
RTCP_INTERVAL = 1.0


@dataclass
class _Slot:
    """A pair of outgoing tracks (audio, video) of a participant, showing one remote."""

    audio: OutTrack | None = None
    video: OutTrack | None = None
    occupant: str | None = None

    def tracks(self) -> list[OutTrack]:
        return [t for t in (self.audio, self.video) if t is not None]


@dataclass
class _Participant:
    room_id: str
    participant_id: str
    pc: RTCPeerConnection
    link: PeerLink
    slots: list[_Slot] = field(default_factory=list)
    inbound: dict[str, Inbound] = field(default_factory=dict)
    inbound_by_ssrc: dict[int, Inbound] = field(default_factory=dict)
    rtx_by_ssrc: dict[int, Inbound] = field(default_factory=dict)
    unknown_ssrc_by_pt: dict[int, Inbound] = field(default_factory=dict)
    out_by_ssrc: dict[int, OutTrack] = field(default_factory=dict)
    receivers: list[Any] = field(default_factory=list)
    senders: list[Any] = field(default_factory=list)
    role: str = PUBLISHER
    "On a stage: 'publisher' or 'viewer' (receive only); everyone in a 1:1 room publishes."
    audio_only: bool = False
    "A stage viewer that could not keep up: its video legs stay detached."
    relayed: bool = False
    "A stage publisher of another node whose tracks arrive by a stage relay (server/media/stage_relay.py)."

    def slot_of(self, other: str) -> _Slot | None:
        for slot in self.slots:
            if slot.occupant == other:
                return slot
        return None


@dataclass
class _Room:
    forwarding: bool = True
    participants: dict[str, _Participant] = field(default_factory=dict)
    stage: Stage | None = None
    "Set for a broadcast room (town hall); the room then outlives its participants until close_stage."


def _codec_filter(kind: str, codecs: list[RTCRtpCodecParameters]) -> list[RTCRtpCodecParameters]:
    """Keep only the SFU's codec (VP8 or Opus) and its RTX: every leg uses the same codec."""
    wanted = CODEC_FOR_KIND[kind].lower()
    main = next((c for c in codecs if c.mimeType.lower() == wanted), None)
    if main is None:
        raise UnsupportedOffer(f"offer has no {CODEC_FOR_KIND[kind]} for {kind}")
    rtx = [c for c in codecs if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt") == main.payloadType]
    return [main, *rtx[:1]]


class _RelayedPeer:
    """Stands in for the peer connection of a relayed publisher: it has none on this node."""

    connectionState = "connected"

    async def close(self) -> None:
        pass


RECEIVE_BUFFER = 1 << 20
"""SO_RCVBUF asked for a publisher's sockets. The kernel default (about 200 KB, some 90 packets of video once
the kernel's per-packet overhead is counted) overflows if the event loop stalls for half a second (a full
garbage collection with hundreds of viewers connected took 300 ms in the town hall bench); on a stage every
viewer would see that loss. The kernel caps it at net.core.rmem_max."""


def _enlarge_receive_buffers(connection: Any) -> None:
    for protocol in getattr(connection, aiortc_glue.CONN_PROTOCOLS):
        sock = protocol.transport.get_extra_info("socket") if protocol.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


SDP_ERRORS = (ValueError, IndexError, KeyError, AttributeError, TypeError)
"""What aiortc's SDP parser (and ``setRemoteDescription`` on what it parsed) raises for a malformed offer: a
client's text, answered ``UnsupportedOffer``, never a traceback (found by probing: half an offer, or
``a=setup:bogus``, was a 500 with aiortc's AttributeError or KeyError in the log)."""


def _offer_check(offer_sdp: str) -> SessionDescription:
    """Every offer: it parses, each audio/video section has its DTLS and ICE parameters, and one BUNDLE group
    holds them all (an offer without one was served with a group it never proposed)."""
    try:
        description = SessionDescription.parse(offer_sdp)
    except SDP_ERRORS as exc:
        raise UnsupportedOffer("offer cannot be parsed") from exc
    media = [m for m in description.media if m.kind in ("audio", "video")]
    for m in media:
        if m.dtls is None or not m.dtls.fingerprints or m.ice is None or not m.ice.usernameFragment \
                or not m.ice.password:
            raise UnsupportedOffer(f"offer's {m.kind} section lacks its DTLS fingerprint or ICE credentials")
    mids = {m.rtp.muxId for m in media}
    if media and not any(g.semantic == "BUNDLE" and mids <= {str(i) for i in g.items} for g in description.group):
        raise UnsupportedOffer("offer does not BUNDLE its media")
    return description


def _viewer_offer_check(description: SessionDescription) -> None:
    """A viewer may only receive: every audio/video section of its offer must be recvonly (or inactive)."""
    for media in description.media:
        if media.kind not in ("audio", "video"):
            continue
        direction = media.direction or "sendrecv"
        if direction not in ("recvonly", "inactive"):
            raise UnsupportedOffer(f"a viewer's offer may only receive; it has {media.kind} {direction}")


def _extension_ids(extensions: list[Any]) -> dict[str, int]:
    return {EXTENSION_NAMES[e.uri]: e.id for e in extensions if e.uri in EXTENSION_NAMES}


def _add_bandwidth(sdp: str, video_kbps: int) -> str:
    """Insert ``b=AS`` into every video section: browsers cap their encoder to it."""
    out: list[str] = []
    in_video = False
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            in_video = line.startswith("m=video")
        out.append(line)
        if in_video and line.startswith("c="):
            out.append(f"b=AS:{video_kbps}")
    return "\r\n".join(out)


class MediaHub:
    """An SFU: forwards encoded RTP between the participants of each room.

    :param ice_servers: ICE servers for the server's peer connections; keep it
        empty (the default) unless a TURN server is configured, otherwise aiortc
        asks a public STUN server.
    :param max_video_bitrate: cap for every publisher's video, in bit/s, sent as
        REMB and as ``b=AS`` in the answer.
    :param keyframe_interval: minimum seconds between two PLIs to one publisher.
    """

    def __init__(
        self,
        ice_servers: list[RTCIceServer] | None = None,
        max_video_bitrate: int = 1_000_000,
        keyframe_interval: float = 0.5,
    ) -> None:
        self._ice_servers = list(ice_servers or [])
        self._max_video_bitrate = max_video_bitrate
        self._keyframe_interval = keyframe_interval
        self._rooms: dict[str, _Room] = {}
        self._counters = Counters()
        self._rtcp_task: asyncio.Task[None] | None = None
        self._closed_receivers_decoding = 0
        self._background: set[asyncio.Future[None]] = set()
        self._recorders: dict[str, RoomRecorder] = {}
        "Running recorders by room; outlive the room when its last participant leaves (until stopped)."
        self.on_viewer_audio_only: Callable[[str, str], None] | None = None
        "Set by signaling: called (room_id, participant_id) on the event loop when a stage viewer's video is dropped."
        self._stage_watchers: dict[str, list[Callable[[], None]]] = {}
        self._stage_pending: set[str] = set()

    # -- membership ----------------------------------------------------------

    async def handle_offer(self, room_id: str, participant_id: str, offer_sdp: str, role: str = PUBLISHER) -> str:
        """Connect a participant to a room; returns the SDP answer.

        The offer must BUNDLE its media. Each audio/video transceiver pair that
        can receive is a *slot* showing one other participant: a client offering
        its own camera (sendrecv) plus one extra recvonly pair can see two others
        (counterpart and interpreter) without renegotiation. Which remote is in
        which slot: :meth:`layout`. A participant that offers again replaces its
        previous connection.

        On a stage (:meth:`create_stage`) ``role`` is ``"viewer"`` (the offer may only hold
        ``recvonly`` transceivers, one audio+video pair per publisher it can show, else
        ``UnsupportedOffer``) or ``"publisher"`` (only after :meth:`promote`, else ``NotOnStage``).
        Elsewhere only ``"publisher"`` is accepted (``UnknownStage`` for a viewer).
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        existing = self._rooms.get(room_id)
        stage = existing.stage if existing is not None else None
        description = _offer_check(offer_sdp)
        if role == VIEWER:
            if stage is None:
                raise UnknownStage(f"room {room_id!r} is not a stage")
            _viewer_offer_check(description)
        elif stage is not None and participant_id not in stage.promoted:
            raise NotOnStage("only promoted participants publish on a stage: call promote() first")
        room = self._rooms.setdefault(room_id, _Room())
        if participant_id in room.participants:
            if room.participants[participant_id].relayed:  # replacing it would cut this node's viewers off it
                raise UnsupportedOffer("this participant publishes on the stage from another server")
            await self.leave(room_id, participant_id)
            room = self._rooms.setdefault(room_id, _Room())

        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except SDP_ERRORS as exc:
                raise UnsupportedOffer("offer cannot be parsed") from exc
            transceivers = pc.getTransceivers()
            if not transceivers:
                raise UnsupportedOffer("offer has no audio or video")
            dtls = transceivers[0].receiver.transport
            if any(t.receiver.transport is not dtls for t in transceivers):
                raise UnsupportedOffer("offer does not BUNDLE its media")
            link = PeerLink(dtls, aiortc_glue.sender_ssrc(transceivers[0].sender))
            participant = _Participant(room_id, participant_id, pc, link, role=role)
            for t in transceivers:
                aiortc_glue.set_transceiver_codecs(t, _codec_filter(t.kind, aiortc_glue.transceiver_codecs(t)))
                t.direction = "sendrecv"
                aiortc_glue.silence_sender(t.sender, partial(self._on_link_ready, participant))
                aiortc_glue.intercept_receiver(t.receiver, partial(self._on_receive_parameters, participant, t))
                participant.receivers.append(t.receiver)
                participant.senders.append(t.sender)
            aiortc_glue.intercept_rtcp(dtls, partial(self._on_rtcp, participant))
            await pc.setLocalDescription(await pc.createAnswer())
            # gathering (in setLocalDescription) created the sockets; no media before ICE completes
            if not aiortc_glue.intercept_datagrams(link.connection, partial(self._on_datagram, participant)):
                raise UnsupportedOffer("no local ICE candidate to receive media on")
            if role == PUBLISHER:
                _enlarge_receive_buffers(link.connection)
        except BaseException:
            await pc.close()
            raise

        self._build_slots(participant)

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            # a peer that goes away without signaling (tab closed, network gone) is removed
            if pc.connectionState in ("failed", "closed"):
                task = asyncio.ensure_future(self._remove(participant))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        self._connect(room, participant)
        self._ensure_rtcp_task()
        logger.info("media room %s: participant joined (%d in room)", room_id, len(room.participants))
        return _add_bandwidth(pc.localDescription.sdp, self._max_video_bitrate // 1000)

    async def leave(self, room_id: str, participant_id: str) -> None:
        """Disconnect a participant; the others' slots showing it fall silent."""
        room = self._rooms.get(room_id)
        if room is None or participant_id not in room.participants:
            return
        await self._remove(room.participants[participant_id])

    async def _remove(self, participant: _Participant) -> None:
        room_id, participant_id = participant.room_id, participant.participant_id
        room = self._rooms.get(room_id)
        if room is None or room.participants.get(participant_id) is not participant:
            return  # already gone, or replaced by a newer connection of the same participant
        self._take_out(room, participant)
        self._closed_receivers_decoding += sum(aiortc_glue.receiver_decoding(r) for r in participant.receivers)
        await participant.pc.close()
        logger.info("media room %s: participant left", room_id)

    def move(self, participant_id: str, from_room: str, to_room: str) -> None:
        """Move a connected participant to another room, keeping its connection.

        For the waiting room: a citizen connects (camera check, self view) in a
        room of their own while waiting; "call next" moves them into the clerk's
        room, which only switches forwarding. Video to and from them restarts at
        a keyframe the server requests at once. Raises ``UnknownParticipant``; if
        ``to_room`` already has a participant with that id, that one is removed. Into a
        stage, a publishing participant must have been promoted (``NotOnStage``).
        """
        participant = self._participant(from_room, participant_id)
        if from_room == to_room:
            return
        stage = self._rooms[to_room].stage if to_room in self._rooms else None
        if stage is not None and participant.role == PUBLISHER and participant_id not in stage.promoted:
            raise NotOnStage("only promoted participants publish on a stage: call promote() first")
        self._take_out(self._rooms[from_room], participant)
        target = self._rooms.setdefault(to_room, _Room())
        previous = target.participants.get(participant_id)
        if previous is not None:
            self._take_out(target, previous)
            self._closed_receivers_decoding += sum(aiortc_glue.receiver_decoding(r) for r in previous.receivers)
            task = asyncio.ensure_future(previous.pc.close())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            target = self._rooms.setdefault(to_room, _Room())
        participant.room_id = to_room
        self._connect(target, participant)
        recorder = self._recorders.get(to_room)
        if recorder is not None:
            for inbound in participant.inbound.values():
                recorder.add_track(participant_id, inbound)
        logger.info("media room %s: participant moved in (%d in room)", to_room, len(target.participants))

    def set_self_view(self, room_id: str, participant_id: str, enabled: bool) -> None:
        """Show a participant its own media through the server (camera check), in a free slot."""
        participant = self._participant(room_id, participant_id)
        slot = participant.slot_of(participant_id)
        if enabled and slot is None:
            self._pair(participant, participant)
        elif not enabled and slot is not None:
            self._free(slot)

    @staticmethod
    def _free(slot: _Slot) -> None:
        for track in slot.tracks():
            track.detach()
            track.source = None
        slot.occupant = None

    def _connect(self, room: _Room, participant: _Participant) -> None:
        """Put a participant into a room and fill slots: everyone sees everyone, on a stage everyone sees
        the publishers (viewers never see each other, nobody sees a viewer)."""
        others = list(room.participants.values())
        room.participants[participant.participant_id] = participant  # before pairing: _attach looks publishers up
        for other in others:
            if room.stage is None or other.role == PUBLISHER:
                self._pair(participant, other)
            if room.stage is None or participant.role == PUBLISHER:
                self._pair(other, participant)
        if room.stage is not None:
            self._stage_changed(participant.room_id)

    def _take_out(self, room: _Room, participant: _Participant) -> None:
        """Unlink a participant from its room: no legs to or from it, no slots showing it."""
        participant_id = participant.participant_id
        if room.participants.get(participant_id) is participant:
            del room.participants[participant_id]
        if room.stage is not None:
            room.stage.health.pop(participant_id, None)
            room.stage.remb_sent.pop(participant_id, None)
            room.stage.labels.pop(participant_id, None)
            video = participant.inbound.get("video")
            if video is not None:
                room.stage.keyframe_sent_by_departed += video.keyframe_requests
        for inbound in participant.inbound.values():
            inbound.cancel_trailing()
        recorder = self._recorders.get(participant.room_id)
        if recorder is not None:
            recorder.remove_participant(participant_id)
        for inbound in participant.inbound.values():
            for leg in list(inbound.legs):
                leg.detach()
                leg.source = None
        for other in room.participants.values():
            slot = other.slot_of(participant_id)
            if slot is not None:
                self._free(slot)
        for slot in participant.slots:
            self._free(slot)
        if not room.participants and room.stage is None and self._rooms.get(participant.room_id) is room:
            del self._rooms[participant.room_id]
        if room.stage is not None:
            self._stage_changed(participant.room_id)

    def set_forwarding(self, room_id: str, enabled: bool) -> None:
        """Switch forwarding in a room on or off; connections stay up.

        Lets a citizen's connection be opened while they wait, so that "call
        next" only switches media on. When switched on, video is gated until the
        next keyframe, which the server requests.
        """
        room = self._rooms.setdefault(room_id, _Room())
        if room.forwarding == enabled:
            return
        room.forwarding = enabled
        for participant in room.participants.values():
            for slot in participant.slots:
                if slot.occupant is None:
                    continue
                for track in slot.tracks():
                    if enabled:
                        self._attach(room, participant, slot, track)
                    else:
                        track.detach()

    def layout(self, room_id: str, participant_id: str) -> dict[str, RemoteSlot]:
        """Which remote participant each of this participant's slots shows, by mid."""
        participant = self._participant(room_id, participant_id)
        return {
            slot.occupant: RemoteSlot(
                audio_mid=slot.audio.mid if slot.audio else None,
                video_mid=slot.video.mid if slot.video else None,
            )
            for slot in participant.slots
            if slot.occupant is not None
        }

    def participants(self, room_id: str) -> list[str]:
        room = self._rooms.get(room_id)
        return list(room.participants) if room else []

    # -- stage (town hall) -------------------------------------------------------

    def create_stage(
        self,
        room_id: str,
        *,
        max_viewer_bitrate_floor: int = 150_000,
        max_viewer_loss: float = 0.10,
        audio_only_after: float = 5.0,
    ) -> None:
        """Make ``room_id`` a broadcast room: few publishers (after :meth:`promote`), many viewers.

        Viewer estimates below ``max_viewer_bitrate_floor`` (bit/s) do not lower the publishers'
        bitrate; a viewer below it, or reporting more than ``max_viewer_loss`` of its video lost,
        for ``audio_only_after`` seconds in a row loses its video (``on_viewer_audio_only``).
        The stage lives until :meth:`close_stage`, even while nobody is connected. Calling it
        again for an existing stage changes its policy only. Raises ValueError for a room that
        already has participants and is not a stage (a 1:1 call does not become a broadcast).
        """
        policy = StagePolicy(
            floor_bps=max_viewer_bitrate_floor, max_loss=max_viewer_loss, audio_only_after=audio_only_after
        )
        room = self._rooms.get(room_id)
        if room is not None and room.stage is not None:
            room.stage.policy = policy
            return
        if room is not None and room.participants:
            raise ValueError(f"room {room_id!r} has participants and is not a stage")
        room = self._rooms.setdefault(room_id, _Room())
        room.stage = Stage(policy=policy)
        logger.info("media room %s: stage created", room_id)

    async def close_stage(self, room_id: str) -> None:
        """Disconnect everyone on the stage and forget it."""
        room = self._stage_room(room_id)
        for participant_id in list(room.participants):
            await self.leave(room_id, participant_id)
        if self._rooms.get(room_id) is room:
            del self._rooms[room_id]
        self._stage_changed(room_id)

    def promote(self, room_id: str, participant_id: str) -> None:
        """Allow a participant to publish on the stage: its next offer may be ``role="publisher"``.

        For everyone who publishes (politicians and moderators before their first offer, a citizen
        invited on stage before their re-offer). A viewer's current connection stays receive-only
        until it offers again. Idempotent.
        """
        self._stage_room(room_id).stage.promoted.add(participant_id)  # type: ignore[union-attr]

    def demote(self, room_id: str, participant_id: str) -> None:
        """Take a participant off the stage (the moderator ends a citizen's turn), at once.

        Its media stops reaching anyone, the slots showing it are freed, and it counts as a viewer
        (it keeps receiving the publishers on its current connection). It may not publish again
        before another :meth:`promote`; signaling should have it re-offer as a viewer (which
        releases its camera). Unknown participants are ignored.
        """
        room = self._stage_room(room_id)
        stage = room.stage
        assert stage is not None
        stage.promoted.discard(participant_id)
        participant = room.participants.get(participant_id)
        if participant is None or participant.role != PUBLISHER:
            return
        recorder = self._recorders.get(room_id)
        if recorder is not None:  # off the stage is off the record (their camera may run until they re-offer)
            recorder.remove_participant(participant_id)
        for inbound in participant.inbound.values():
            for leg in list(inbound.legs):
                leg.detach()
                leg.source = None
        for other in room.participants.values():
            slot = other.slot_of(participant_id)
            if slot is not None:
                self._free(slot)
        participant.role = VIEWER
        self._stage_changed(room_id)
        logger.info("media room %s: publisher left the stage", room_id)

    def stage_layout(self, room_id: str, participant_id: str) -> dict[str, RemoteSlot]:
        """Which publisher each of this participant's slots shows, by mid (as :meth:`layout`)."""
        self._stage_room(room_id)
        return self.layout(room_id, participant_id)

    def restore_video(self, room_id: str, participant_id: str) -> None:
        """Give an audio-only viewer its video back (it asked to try again); judged afresh from now."""
        room = self._stage_room(room_id)
        participant = self._participant(room_id, participant_id)
        if not participant.audio_only:
            return
        participant.audio_only = False
        room.stage.health.pop(participant_id, None)  # type: ignore[union-attr]
        for slot in participant.slots:
            if slot.video is not None:
                slot.video.remb = None
                slot.video.fraction_lost = 0
                self._attach(room, participant, slot, slot.video)

    def stage_stats(self, room_id: str) -> StageStats:
        room = self._stage_room(room_id)
        stage = room.stage
        assert stage is not None
        publishers = tuple(p.participant_id for p in room.participants.values() if p.role == PUBLISHER)
        upstream = stage.keyframe_sent_by_departed
        for participant in room.participants.values():
            video = participant.inbound.get("video")
            if video is not None and participant.role == PUBLISHER:
                upstream += video.keyframe_requests
        return StageStats(
            room_id=room_id,
            publishers=publishers,
            viewers=len(room.participants) - len(publishers),
            audio_only_viewers=tuple(p.participant_id for p in room.participants.values() if p.audio_only),
            keyframe_requests_from_viewers=stage.keyframe_asks,
            keyframe_requests_upstream=upstream,
            publisher_bitrate_bps=dict(stage.remb_sent),
        )

    # -- stage relays between nodes (server/media/stage_relay.py) -----------------------

    def watch_stage(self, room_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` (soon after, on the event loop, once per batch) whenever the stage's membership
        or its publishers' tracks change, or the stage closes. Returns the function that stops watching."""
        self._stage_watchers.setdefault(room_id, []).append(callback)

        def unwatch() -> None:
            watchers = self._stage_watchers.get(room_id, [])
            if callback in watchers:
                watchers.remove(callback)
            if not watchers:
                self._stage_watchers.pop(room_id, None)

        return unwatch

    def _stage_changed(self, room_id: str) -> None:
        if room_id not in self._stage_watchers or room_id in self._stage_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._stage_pending.add(room_id)
        loop.call_soon(self._tell_stage_watchers, room_id)

    def _tell_stage_watchers(self, room_id: str) -> None:
        self._stage_pending.discard(room_id)
        for callback in list(self._stage_watchers.get(room_id, [])):
            try:
                callback()
            except Exception:
                logger.exception("media: a stage watcher failed")

    def is_stage(self, room_id: str) -> bool:
        room = self._rooms.get(room_id)
        return room is not None and room.stage is not None

    def local_publishers(self, room_id: str) -> dict[str, dict[str, Inbound]]:
        """The stage's publishers connected to this node (not relayed from another), with their tracks."""
        room = self._rooms.get(room_id)
        if room is None or room.stage is None:
            return {}
        return {
            p.participant_id: dict(p.inbound)
            for p in room.participants.values()
            if p.role == PUBLISHER and not p.relayed and p.inbound
        }

    def local_members(self, room_id: str) -> int:
        """Participants of the stage connected to this node (viewers and publishers, not relayed ones)."""
        room = self._rooms.get(room_id)
        return 0 if room is None else sum(1 for p in room.participants.values() if not p.relayed)

    def add_relayed_publisher(self, room_id: str, participant_id: str, inbound: dict[str, Inbound]) -> bool:
        """Show a publisher of another node on this node's stage: its tracks (fed by a stage relay) are
        forwarded to the viewers here like a local publisher's. False if that id is connected here already."""
        room = self._stage_room(room_id)
        if participant_id in room.participants:
            return False
        participant = _Participant(
            room_id, participant_id, cast(RTCPeerConnection, _RelayedPeer()), RelayedLink(), relayed=True
        )
        participant.inbound = dict(inbound)
        for track in inbound.values():
            if track.ssrc is not None:
                participant.inbound_by_ssrc[track.ssrc] = track
        self._connect(room, participant)
        recorder = self._recorders.get(room_id)
        if recorder is not None:
            for track in inbound.values():
                recorder.add_track(participant_id, track)
        self._ensure_rtcp_task()
        logger.info("media room %s: a relayed publisher joined", room_id)
        return True

    def remove_relayed_publisher(self, room_id: str, participant_id: str) -> None:
        room = self._rooms.get(room_id)
        participant = room.participants.get(participant_id) if room is not None else None
        if room is None or participant is None or not participant.relayed:
            return
        self._take_out(room, participant)
        logger.info("media room %s: a relayed publisher left", room_id)

    def set_label(self, room_id: str, participant_id: str, label: dict[str, str]) -> None:
        """What a stage participant is called (name, role) where its media is relayed to: other nodes' signaling
        knows nothing of a socket connected here."""
        room = self._stage_room(room_id)
        assert room.stage is not None
        if room.stage.labels.get(participant_id) != label:
            room.stage.labels[participant_id] = dict(label)
            self._stage_changed(room_id)

    def label(self, room_id: str, participant_id: str) -> dict[str, str]:
        room = self._rooms.get(room_id)
        return dict(room.stage.labels.get(participant_id, {})) if room is not None and room.stage else {}

    def _stage_room(self, room_id: str) -> _Room:
        room = self._rooms.get(room_id)
        if room is None or room.stage is None:
            raise UnknownStage(f"room {room_id!r} is not a stage")
        return room

    def _judge_viewers(self, room_id: str, room: _Room, now: float) -> None:
        """Once a second: a viewer that has not kept up for long enough loses its video, and is told."""
        stage = room.stage
        assert stage is not None
        for participant in list(room.participants.values()):
            if participant.role != VIEWER or participant.audio_only:
                continue
            video = [s.video for s in participant.slots if s.video is not None and s.video.source is not None]
            if not video:
                continue
            rembs = [t.remb for t in video if t.remb is not None]
            remb = min(rembs) if rembs else None
            # loss on the publisher's uplink reaches every viewer alike: only what is lost beyond it is this
            # viewer's own (else one bad uplink would send the whole audience to audio only)
            loss = max(max(0, t.fraction_lost - (t.source.lost_fraction if t.source else 0)) for t in video) / 256
            sent = sum(t.bitrate for t in video)  # updated by _periodic just before
            before = stage.health.get(participant.participant_id, ViewerHealth())
            health = judge_viewer(before, remb, loss, sent, now, stage.policy)
            stage.health[participant.participant_id] = health
            if not health.audio_only:
                continue
            participant.audio_only = True
            for track in video:
                track.detach()
            logger.info("media room %s: a viewer could not keep up, video dropped", room_id)
            if self.on_viewer_audio_only is not None:
                try:
                    self.on_viewer_audio_only(room_id, participant.participant_id)
                except Exception:
                    logger.exception("media: on_viewer_audio_only failed")

    # -- recording -------------------------------------------------------------

    def start_recording(
        self,
        room_id: str,
        directory: Path,
        on_failure: Callable[[str], None] | None = None,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> RoomRecorder:
        """Record every track published in the room, now and by whoever joins or moves in later.

        ``directory`` must exist (mode 0700, made by the caller); the per-track files go
        to ``directory/tracks/``, the index to ``directory/tracks.json`` on
        :meth:`RoomRecorder.stop`. ``on_failure(reason)`` is called (on the event loop)
        if the recording fails, e.g. when the disk cannot keep up (``queue_size``
        frames behind); the call goes on. Raises ValueError if the room already records.
        """
        if room_id in self._recorders:
            raise ValueError(f"room {room_id!r} is already recording")
        recorder = RoomRecorder(
            room_id, directory, on_failure, queue_size=queue_size, on_finished=partial(self._recorder_finished, room_id)
        )
        self._recorders[room_id] = recorder
        room = self._rooms.get(room_id)
        if room is not None:
            for participant in room.participants.values():
                for inbound in participant.inbound.values():
                    recorder.add_track(participant.participant_id, inbound)
        return recorder

    def recorder(self, room_id: str) -> RoomRecorder | None:
        """The running recorder of a room (None once it stopped or failed)."""
        return self._recorders.get(room_id)

    def recorded_rooms(self) -> list[str]:
        """Rooms with a running recorder."""
        return list(self._recorders)

    def _recorder_finished(self, room_id: str, recorder: RoomRecorder) -> None:
        if self._recorders.get(room_id) is recorder:
            del self._recorders[room_id]

    async def close(self) -> None:
        for recorder in list(self._recorders.values()):
            await recorder.stop()
        for room_id in list(self._rooms):
            for participant_id in list(self._rooms.get(room_id, _Room()).participants):
                await self.leave(room_id, participant_id)
        self._rooms.clear()  # stages outlive their participants; the hub does not
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._rtcp_task is not None:
            self._rtcp_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rtcp_task
            self._rtcp_task = None

    # -- statistics ----------------------------------------------------------

    def stats(self, room_id: str, participant_id: str) -> ParticipantStats:
        participant = self._participant(room_id, participant_id)
        up = tuple(
            TrackStats(
                kind=i.kind,
                direction="up",
                peer=None,
                packets=i.packets,
                bitrate_bps=i.bitrate,
                packets_lost=max(0, i.cycles + i.max_seq - (i.base_seq or 0) + 1 - i.packets)
                if i.base_seq is not None
                else 0,
                fraction_lost=i.lost_fraction / 256,
                jitter_ms=i.jitter * 1000 / i.clock_rate,
                rtt_ms=None,
                nacks=i.nacks_sent,
                retransmissions=i.recovered,
                keyframe_requests=i.keyframe_requests,
            )
            for i in participant.inbound.values()
        )
        down = tuple(
            TrackStats(
                kind=t.kind,
                direction="down",
                peer=slot.occupant,
                packets=t.packets,
                bitrate_bps=t.bitrate,
                packets_lost=t.packets_lost,
                fraction_lost=t.fraction_lost / 256,
                jitter_ms=t.jitter * 1000 / t.clock_rate,
                rtt_ms=t.rtt * 1000 if t.rtt is not None else None,
                nacks=t.nacks_received,
                retransmissions=t.retransmitted,
                keyframe_requests=t.keyframe_requests_received,
            )
            for slot in participant.slots
            for t in slot.tracks()
        )
        return ParticipantStats(
            room_id=room_id,
            participant_id=participant_id,
            connection_state=participant.pc.connectionState,
            up=up,
            down=down,
        )

    def metrics(self) -> tuple[int, int, int]:
        """Rooms, forwarded and dropped packets, for /metrics: existing counters only, read in O(1)."""
        return len(self._rooms), self._counters.forwarded, self._counters.dropped

    def counters(self) -> HubCounters:
        decoded = self._closed_receivers_decoding
        encoders = 0
        for room in self._rooms.values():
            for participant in room.participants.values():
                decoded += sum(aiortc_glue.receiver_decoding(r) for r in participant.receivers)
                encoders += sum(aiortc_glue.sender_has_encoder(s) for s in participant.senders)
        c = self._counters
        return HubCounters(
            forwarded_packets=c.forwarded,
            retransmitted_packets=c.retransmitted,
            keyframe_requests=c.keyframe_requests,
            dropped_packets=c.dropped,
            decoded_frames=decoded,
            encoders=encoders,
        )

    # -- wiring --------------------------------------------------------------

    def _participant(self, room_id: str, participant_id: str) -> _Participant:
        room = self._rooms.get(room_id)
        if room is None or participant_id not in room.participants:
            raise UnknownParticipant(f"no participant {participant_id!r} in room {room_id!r}")
        return room.participants[participant_id]

    def _build_slots(self, participant: _Participant) -> None:
        audio: list[OutTrack] = []
        video: list[OutTrack] = []
        for t in participant.pc.getTransceivers():
            if t.currentDirection not in ("sendonly", "sendrecv"):
                continue
            codec = aiortc_glue.transceiver_codecs(t)[0]
            track = OutTrack(
                link=participant.link,
                counters=self._counters,
                kind=t.kind,
                ssrc=aiortc_glue.sender_ssrc(t.sender),
                payload_type=int(codec.payloadType or 0),
                clock_rate=codec.clockRate,
                mid=t.mid,
                extension_ids=_extension_ids(aiortc_glue.transceiver_header_extensions(t)),
            )
            participant.out_by_ssrc[track.ssrc] = track
            (audio if t.kind == "audio" else video).append(track)
        for i in range(max(len(audio), len(video))):
            participant.slots.append(
                _Slot(audio=audio[i] if i < len(audio) else None, video=video[i] if i < len(video) else None)
            )

    def _pair(self, subscriber: _Participant, publisher: _Participant) -> None:
        """Give ``publisher`` a free slot of ``subscriber`` and attach its tracks."""
        slot = next((s for s in subscriber.slots if s.occupant is None), None)
        if slot is None:
            logger.warning("media room %s: no free slot to show a participant", subscriber.room_id)
            return
        slot.occupant = publisher.participant_id
        room = self._rooms[subscriber.room_id]
        for track in slot.tracks():
            self._attach(room, subscriber, slot, track)

    def _attach(self, room: _Room, subscriber: _Participant, slot: _Slot, track: OutTrack) -> None:
        if not room.forwarding or slot.occupant is None or (subscriber.audio_only and track.video):
            return
        publisher = room.participants.get(slot.occupant)
        if publisher is None:
            return
        source = publisher.inbound.get(track.kind)
        if source is not None:
            track.attach(source)
            if room.stage is not None and track.video and subscriber.role == VIEWER:
                room.stage.keyframe_asks += 1  # a joining viewer's leg waits for a keyframe

    def _on_receive_parameters(
        self, participant: _Participant, transceiver: RTCRtpTransceiver, params: RTCRtpReceiveParameters
    ) -> None:
        """aiortc starts a receiver (DTLS is up): the participant publishes this track."""
        kind = transceiver.kind
        if kind in participant.inbound:
            logger.warning("media: second %s track of one participant ignored", kind)
            return
        main = params.codecs[0]
        rtx = next((c for c in params.codecs if c.mimeType.lower().endswith("/rtx")), None)
        encoding = params.encodings[0] if params.encodings else None
        ids = _extension_ids(params.headerExtensions)
        inbound = Inbound(
            link=participant.link,
            counters=self._counters,
            kind=kind,
            ssrc=encoding.ssrc if encoding else None,
            payload_type=int(main.payloadType or 0),
            clock_rate=main.clockRate,
            rtx_ssrc=encoding.rtx.ssrc if encoding and encoding.rtx else None,
            rtx_payload_type=int(rtx.payloadType) if rtx and rtx.payloadType is not None else None,
            audio_level_id=ids.get("audio-level") if kind == "audio" else None,
            keyframe_interval=self._keyframe_interval,
        )
        participant.inbound[kind] = inbound
        if inbound.ssrc is not None:
            participant.inbound_by_ssrc[inbound.ssrc] = inbound
        else:
            participant.unknown_ssrc_by_pt[inbound.payload_type] = inbound
        if inbound.rtx_ssrc is not None:
            participant.rtx_by_ssrc[inbound.rtx_ssrc] = inbound
        recorder = self._recorders.get(participant.room_id)
        if recorder is not None and participant.role == PUBLISHER:
            recorder.add_track(participant.participant_id, inbound)
        room = self._rooms.get(participant.room_id)
        if room is None:
            return
        if room.stage is not None:
            self._stage_changed(participant.room_id)
        for other in room.participants.values():
            slot = other.slot_of(participant.participant_id)
            if slot is None:
                continue
            track = slot.audio if kind == "audio" else slot.video
            if track is not None:
                self._attach(room, other, slot, track)

    def _on_link_ready(self, participant: _Participant) -> None:
        """A sender started, so DTLS is connected: gated video legs ask for a keyframe."""
        participant.link.ready()
        for slot in participant.slots:
            for track in slot.tracks():
                track.on_link_ready()

    def _on_datagram(self, participant: _Participant, data: bytes) -> bool:
        """The fast path: SRTP in, decrypted once, forwarded. True if consumed."""
        if len(data) < 12:
            return False
        b0 = data[0]
        if b0 < 128 or b0 > 191 or 192 <= data[1] <= 208:
            return False  # STUN, DTLS, or SRTCP: aiortc's path
        link = participant.link
        rx = link.rx
        if rx is None:
            if not link.ready():
                return False
            rx = link.rx
        try:
            data = rx.unprotect(data)
        except pylibsrtp.Error:
            self._counters.dropped += 1
            return True
        ssrc = (data[8] << 24) | (data[9] << 16) | (data[10] << 8) | data[11]
        inbound = participant.inbound_by_ssrc.get(ssrc)
        try:
            if inbound is not None:
                inbound.receive(data)
                return True
            inbound = participant.rtx_by_ssrc.get(ssrc)
            if inbound is not None:
                original = inbound.unwrap_rtx(data)
                if original is not None:
                    inbound.receive(original)
                return True
            inbound = participant.unknown_ssrc_by_pt.pop(data[1] & 0x7F, None)
            if inbound is not None:  # learn the SSRC the offer did not announce
                inbound.ssrc = ssrc
                participant.inbound_by_ssrc[ssrc] = inbound
                inbound.receive(data)
                return True
            self._counters.dropped += 1
        except Exception:  # never let one bad packet break the ICE callback
            self._counters.errors += 1
            logger.exception("media: forwarding failed")
        return True

    async def _on_rtcp(self, participant: _Participant, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            return
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                inbound = participant.inbound_by_ssrc.get(packet.ssrc)
                if inbound is not None:
                    inbound.on_sender_report(packet)
            if isinstance(packet, (RtcpSrPacket, RtcpRrPacket)):
                for report in packet.reports:
                    track = participant.out_by_ssrc.get(report.ssrc)
                    if track is not None:
                        track.on_report(report)
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                track = participant.out_by_ssrc.get(packet.media_ssrc)
                if track is not None:
                    track.retransmit(packet.lost)
            elif isinstance(packet, RtcpPsfbPacket):
                if packet.fmt == RTCP_PSFB_PLI:
                    track = participant.out_by_ssrc.get(packet.media_ssrc)
                    if track is not None:
                        self._keyframe_wanted(participant, track)
                elif packet.fmt == RTCP_PSFB_FIR:
                    for pos in range(0, len(packet.fci) - 7, 8):
                        ssrc = int.from_bytes(packet.fci[pos : pos + 4], "big")
                        track = participant.out_by_ssrc.get(ssrc)
                        if track is not None:
                            self._keyframe_wanted(participant, track)
                elif packet.fmt == RTCP_PSFB_APP:
                    try:
                        bitrate, ssrcs = unpack_remb_fci(packet.fci)
                    except ValueError:
                        continue
                    for ssrc in ssrcs:
                        track = participant.out_by_ssrc.get(ssrc)
                        if track is not None:
                            track.remb = bitrate

    def _keyframe_wanted(self, participant: _Participant, track: OutTrack) -> None:
        """A subscriber's PLI/FIR: forwarded upstream through the publisher's merging throttle."""
        track.keyframe_wanted()
        if participant.role == VIEWER:
            room = self._rooms.get(participant.room_id)
            if room is not None and room.stage is not None:
                room.stage.keyframe_asks += 1

    def _ensure_rtcp_task(self) -> None:
        if self._rtcp_task is None or self._rtcp_task.done():
            self._rtcp_task = asyncio.ensure_future(self._run_rtcp())

    async def _run_rtcp(self) -> None:
        """Once a second: RR and REMB to every publisher, re-NACK, bitrates."""
        while True:
            await asyncio.sleep(RTCP_INTERVAL)
            now = time.monotonic()
            for room_id, room in list(self._rooms.items()):
                for participant in list(room.participants.values()):
                    try:
                        self._periodic(room, participant, now)
                    except Exception:
                        logger.exception("media: periodic RTCP failed")
                if room.stage is not None:
                    try:
                        self._judge_viewers(room_id, room, now)
                    except Exception:
                        logger.exception("media: judging stage viewers failed")

    def _periodic(self, room: _Room, participant: _Participant, now: float) -> None:
        link = participant.link
        inbounds = list(participant.inbound.values())
        for inbound in inbounds:
            inbound.update_rate(now)
        for slot in participant.slots:
            for track in slot.tracks():
                track.update_rate(now)
        if not inbounds or not link.ready():
            return
        compound = receiver_report_packet(link, inbounds) or b""
        stage = room.stage
        for inbound in inbounds:
            if stage is None or not inbound.video:
                compound += inbound.remb(self._max_video_bitrate) or b""
                continue
            # a stage: one slow viewer must not set the bitrate for everyone
            bitrate = aggregate_remb(
                (leg.remb for leg in inbound.legs if leg.remb is not None),
                self._max_video_bitrate,
                stage.policy.floor_bps,
            )
            stage.remb_sent[participant.participant_id] = bitrate
            compound += inbound.remb_packet(bitrate) or b""
        if compound:
            link.send_rtcp(compound)
        for inbound in inbounds:
            if inbound.missing:
                inbound.send_nack(sorted(inbound.missing))
