"""The stage (town hall): a few publishers, many receive-only viewers. Pure rules, no I/O.

What a stage changes in the hub (server/media/hub.py):

* Roles. A *publisher* (politician, moderator, a citizen invited on stage) publishes and sees the other
  publishers; a *viewer* offers only ``recvonly`` transceivers and sees the publishers. Viewers are never
  paired with each other and never hold a publishing transceiver.
* Bitrate. On a 1:1 call the REMB sent to a publisher is the minimum over its subscribers; on a stage one
  slow viewer would set the bitrate for everyone, so :func:`aggregate_remb` ignores estimates below the
  stage's floor and takes a low quantile of the rest.
* Slow viewers. :func:`judge_viewer` decides, once a second, whether a viewer has been unable to keep up
  (loss above the limit, or its REMB below the floor) for long enough to drop its video.

Keyframe requests need no rule of their own here: every request for a publisher's track goes through
``Inbound.request_keyframe`` (forwarding.py), which merges them into at most one PLI per
``keyframe_interval`` (a trailing PLI when one was asked inside the window and no keyframe is on its way).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import MediaError

PUBLISHER = "publisher"
VIEWER = "viewer"
ROLES = (PUBLISHER, VIEWER)

REMB_QUANTILE = 0.1
"The REMB sent upstream is this quantile of the viewers' estimates at or above the floor."
SLOW_SHARE = 0.75
"""A viewer whose estimate is under this share of what it is sent cannot take the stream (a congested
receiver's estimate drops to 0.85 of what still arrives, a healthy one stays at or above what arrives)."""


class NotOnStage(MediaError):
    """A publisher offer on a stage by a participant not promoted (``MediaHub.promote``)."""


class UnknownStage(MediaError):
    """No stage with that room id (``MediaHub.create_stage`` first)."""


@dataclass(frozen=True)
class StagePolicy:
    """How a stage treats its viewers."""

    floor_bps: int = 150_000
    "Viewer estimates below this do not lower the publishers' bitrate; a viewer below it for long goes audio only."
    max_loss: float = 0.10
    "Fraction of video packets a viewer may report lost (RTCP receiver report) before it counts as not keeping up."
    audio_only_after: float = 5.0
    "Seconds a viewer must be continuously unable to keep up before its video is dropped."


@dataclass(frozen=True)
class ViewerHealth:
    """What the stage knows about one viewer's downlink."""

    bad_since: float | None = None
    "Monotonic time since which the viewer has been unable to keep up, None while it keeps up."
    audio_only: bool = False


def aggregate_remb(estimates: Iterable[int], cap: int, floor: int, quantile: float = REMB_QUANTILE) -> int:
    """The bitrate to ask of a stage publisher: a low quantile of the estimates at or above ``floor``, capped.

    Estimates below the floor belong to viewers that will be moved to audio only; they must not pull the
    stream down for everyone. Without any usable estimate the cap stands (as on a 1:1 call without REMB).
    """
    usable = sorted(e for e in estimates if e >= floor)
    if not usable:
        return cap
    return min(cap, usable[min(len(usable) - 1, int(quantile * len(usable)))])


def judge_viewer(
    health: ViewerHealth,
    remb: int | None,
    fraction_lost: float | None,
    sent_bps: float,
    now: float,
    policy: StagePolicy,
) -> ViewerHealth:
    """Next health of a viewer from its latest video feedback; ``audio_only`` once it is set stays set.

    ``remb`` is the viewer's last REMB for its video (None before the first), ``fraction_lost`` its last
    receiver report's fraction lost (0..1, None before the first), ``sent_bps`` the video payload bitrate
    the server sent it over the last second.

    A REMB below the floor alone proves nothing: a receiver's estimate follows what arrives (a slide on
    screen may be 40 kbit/s). The viewer is too slow when its estimate is below the floor *and* below
    what it is being sent (:data:`SLOW_SHARE` of it): then it cannot take the stream.
    """
    if health.audio_only:
        return health
    too_slow = remb is not None and remb < policy.floor_bps and remb < SLOW_SHARE * sent_bps
    bad = too_slow or (fraction_lost is not None and fraction_lost > policy.max_loss)
    if not bad:
        return ViewerHealth() if health.bad_since is not None else health
    since = health.bad_since if health.bad_since is not None else now
    return ViewerHealth(bad_since=since, audio_only=now - since >= policy.audio_only_after)


@dataclass(frozen=True)
class StageStats:
    """A stage as the moderator's dashboard (and the benchmark) sees it."""

    room_id: str
    publishers: tuple[str, ...]
    viewers: int
    audio_only_viewers: tuple[str, ...]
    "Viewers whose video was dropped because they could not keep up (they still get audio)."
    keyframe_requests_from_viewers: int
    "PLI/FIR received from viewers plus video legs started for joining viewers, since the stage was created."
    keyframe_requests_upstream: int
    "PLIs the server sent to the stage's publishers (after merging), since the stage was created."
    publisher_bitrate_bps: Mapping[str, int] = field(default_factory=dict)
    "The REMB last sent to each publisher."


@dataclass
class Stage:
    """Mutable state of one stage, owned by the hub (event loop only)."""

    policy: StagePolicy
    promoted: set[str] = field(default_factory=set)
    "Participants allowed to make a publisher offer."
    health: dict[str, ViewerHealth] = field(default_factory=dict)
    keyframe_asks: int = 0
    keyframe_sent_by_departed: int = 0
    "PLIs sent to publishers that have since left (their Inbound counters went with them)."
    remb_sent: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    "What signaling calls each participant (name, role): carried to other nodes by the stage relay."
