"""Values of the recording core: policies, consent texts, the consent log, recordings. Frozen, no I/O."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RecordingMode(StrEnum):
    """Whether a department's consultations may be recorded (configured by municipal IT)."""

    OFF = "off"
    ON_REQUEST = "on_request"


@dataclass(frozen=True)
class RecordingPolicy:
    """A department's recording settings."""

    mode: RecordingMode = RecordingMode.OFF
    purpose: str = ""
    """Why recordings are made; shown in every consent request, word for word."""
    retention_days: int = 0
    """Recordings and their consent records are deleted this many days after the request."""

    @property
    def allowed(self) -> bool:
        return self.mode is RecordingMode.ON_REQUEST


class RecordingState(StrEnum):
    """Where a recording is in its life. Nothing is written unless the state is ``recording``."""

    ASKING = "asking"
    """Consent was requested; not every participant has agreed yet."""
    RECORDING = "recording"
    PAUSED = "paused"
    """Someone joined later and has not agreed yet."""
    STOPPED = "stopped"
    """Ended for good: stopped, declined, withdrawn, a participant left, the consultation ended, or failed."""

    @property
    def is_live(self) -> bool:
        return self is not RecordingState.STOPPED


class Answer(StrEnum):
    """A participant's standing towards one recording."""

    PENDING = "pending"
    AGREED = "agreed"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"


class Composition(StrEnum):
    """The one playable file made after the recording ended."""

    NONE = "none"
    """Nothing was recorded (declined before it started)."""
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class ConsentText:
    """The exact text a participant is shown, identified by its version and SHA-256."""

    version: str
    text: str
    sha256: str

    @classmethod
    def of(cls, version: str, text: str) -> ConsentText:
        return cls(version, text, hashlib.sha256(text.encode("utf-8")).hexdigest())


@dataclass(frozen=True)
class ConsentEntry:
    """One line of the consent proof; the log is append-only and never holds a display name."""

    participant: str
    """``citizen:<ticket>`` or ``staff:<username>``."""
    role: str
    """``citizen``, ``clerk`` (holds the ticket) or ``guest`` (an invited colleague or interpreter)."""
    action: str
    """``asked``, ``agreed``, ``declined``, ``withdrawn`` or ``left``."""
    at: float
    text_version: str = ""
    text_sha256: str = ""


@dataclass(frozen=True)
class Participant:
    id: str
    role: str
    answer: Answer = Answer.PENDING


@dataclass(frozen=True)
class Recording:
    id: str
    """Random, URL-safe; names the recording's directory."""
    ticket: str
    department: str
    requested_by: str
    """Username of the clerk who asked for it."""
    purpose: str
    retention_days: int
    state: RecordingState
    created_at: float
    expires_at: float
    """When the recording, its files and its consent records are deleted."""
    participants: tuple[Participant, ...] = ()
    """Who is in the consultation now (or was, when it stopped), with their answer."""
    consents: tuple[ConsentEntry, ...] = ()
    texts: tuple[ConsentText, ...] = ()
    """Every consent text shown for this recording (one per language asked)."""
    segments: tuple[tuple[float, float | None], ...] = ()
    """Wall-clock stretches during which media was written; the last is open while recording."""
    stopped_at: float | None = None
    stop_reason: str | None = None
    """``stopped``, ``declined``, ``withdrawn``, ``left``, ``ended`` or ``failed``."""
    composition: Composition = Composition.NONE
    duration: float = 0.0
    """Seconds of the composed file (0 until composed)."""
    size: int = 0
    """Bytes of the composed file."""

    def replace(self, **changes: Any) -> Recording:
        return dataclasses.replace(self, **changes)

    def participant(self, participant_id: str) -> Participant | None:
        return next((p for p in self.participants if p.id == participant_id), None)

    def recorded_seconds(self, now: float) -> float:
        return sum((end if end is not None else now) - start for start, end in self.segments)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        d["composition"] = self.composition.value
        d["participants"] = [{"id": p.id, "role": p.role, "answer": p.answer.value} for p in self.participants]
        d["segments"] = [list(s) for s in self.segments]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recording:
        d = dict(d)
        d["state"] = RecordingState(d["state"])
        d["composition"] = Composition(d["composition"])
        d["participants"] = tuple(Participant(p["id"], p["role"], Answer(p["answer"])) for p in d["participants"])
        d["consents"] = tuple(ConsentEntry(**c) for c in d["consents"])
        d["texts"] = tuple(ConsentText(**t) for t in d["texts"])
        d["segments"] = tuple((float(s[0]), None if s[1] is None else float(s[1])) for s in d["segments"])
        return cls(**d)


@dataclass(frozen=True)
class RecordingEvent:
    """Something that happened to a recording; the shell turns it into messages and media actions."""

    kind: str
    """``asked`` (``participant`` must answer), ``started``, ``paused``, ``resumed``, ``stopped``, ``left``
    (``participant``, who had not answered, left and is no longer waited for)."""
    recording: Recording
    participant: str | None = None
