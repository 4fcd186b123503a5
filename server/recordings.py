"""The recording service: runs the consent core against its store, drives the media hub's recorder, composes
the result afterwards, enforces retention, and answers staff who look for recordings.

It holds no consent rules of its own ("read, decide with ``server.recording.core``, save, act"). Media
follows the core's events: ``started`` starts the hub's recorder, ``paused``/``resumed`` pause it,
``stopped`` stops it and queues the composition job. The socket.io and HTTP handlers call this service.

Files: ``data_dir/recordings/`` (mode 0700) holds one directory per recording: ``tracks/`` (one WebM
per participant track, written while recording, kept until the composition succeeded), ``tracks.json``
and ``recording.webm`` (the composed file). Nothing there is served statically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .locks import KeyedLocks
from .queue.errors import QueueError
from .queue.model import Clerk
from .recording import core
from .recording.errors import AlreadyRecording, RecordingNotFound
from .recording.model import Composition, ConsentText, Recording, RecordingEvent
from .rooms.departments import Department
from .settings import Settings
from .store.recordings import AccessEntry, RecordingStore
from .tasks import stopping

if TYPE_CHECKING:
    from .media import MediaHub

log = logging.getLogger("sprechstunde.recording")

Listener = Callable[[list[RecordingEvent]], Awaitable[None]]

RECORDING_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
"""Recording ids are ``secrets.token_urlsafe(16)``; anything else (``..``, slashes) is not one."""
COMPOSED_FILE = "recording.webm"
SWEEP_INTERVAL = 300.0
COMPOSE_TIMEOUT = 3600.0


def consultation_room(ticket_id: str) -> str:
    return f"c:{ticket_id}"


class RecordingService:
    def __init__(self, settings: Settings, store: RecordingStore, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.root = settings.data_dir / "recordings"
        self.hub: Callable[[], MediaHub | None] = lambda: None
        """Set by the media signaling: the hub of this process (None while it is not running)."""
        self._listeners: list[Listener] = []
        self._locks = KeyedLocks()
        self._compose_slot = asyncio.Semaphore(1)
        self._jobs: set[asyncio.Task[None]] = set()
        self._recording: set[str] = set()
        """Tickets whose consultation this process records (its hub holds the recorder)."""
        self.composer: list[str] = ["nice", "-n", "10", sys.executable, "-m", "server.media.compose"]
        """Command that composes one recording directory (its path is appended); prints one JSON line."""
        self.on_access: Callable[[AccessEntry], Awaitable[None]] | None = None
        self.departments: Callable[[], Mapping[str, Department]] = lambda: {d.id: d for d in settings.departments}
        """The departments that exist now (the app sets the live directory's, server/store/departments.py)."""
        """Also told every access-log entry (the audit log, server/audit.py)."""

    # -- wiring --
    def on_events(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def policy(self, department: str) -> Any:
        d = self.departments().get(department)
        return d.recording if d is not None else None

    def texts(self, rec: Recording) -> dict[str, ConsentText]:
        """The consent text in every language we have, as shown to participants."""
        d = self.departments().get(rec.department)
        name = d.name if d is not None else rec.department
        policy = d.recording if d is not None else None
        assert policy is not None
        return {lang: core.consent_text(policy, name, lang) for lang in sorted(core.TEXT_LANGUAGES)}

    def _ticket_lock(self, ticket_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._locks.hold(ticket_id)

    async def _commit(self, before: Recording, result: tuple[Recording, list[RecordingEvent]]) -> Recording:
        """Save what changed, then let media follow, then tell the listeners (sockets)."""
        rec, events = result
        if rec != before:
            await self.store.save(rec)
        for e in events:
            log.info("recording %s of ticket %s: %s -> %s", rec.id, rec.ticket, e.kind, e.recording.state.value)
            await self._follow(e)
        if events:
            for listener in self._listeners:
                await listener(events)
        return rec

    # -- commands from participants --
    async def request(self, ticket_id: str, department: str, requester: str, role: str,
                      present: list[tuple[str, str]]) -> Recording:
        async with self._ticket_lock(ticket_id):
            live = await self.store.live_for_ticket(ticket_id)
            policy = self.policy(department)
            rec, events = core.request(
                recording_id=secrets.token_urlsafe(16), ticket_id=ticket_id, department=department,
                policy=policy, requester=requester, requester_role=role, present=present, live=live,
                now=self.clock(),
            )
            if not await self.store.create(rec):
                raise AlreadyRecording()
            log.info("recording %s of ticket %s: requested (%d participants)", rec.id, ticket_id,
                     len(rec.participants))
            for listener in self._listeners:
                await listener(events)
            return rec

    async def _live(self, ticket_id: str, recording_id: object) -> Recording:
        rec = await self.store.get(recording_id) if isinstance(recording_id, str) else None
        if rec is None or rec.ticket != ticket_id:
            raise RecordingNotFound()
        return rec

    async def answer(self, ticket_id: str, recording_id: object, participant: str, agree: bool,
                     sha256: object) -> Recording:
        async with self._ticket_lock(ticket_id):
            rec = await self._live(ticket_id, recording_id)
            texts = self.texts(rec)
            text = next((t for t in texts.values() if t.sha256 == sha256), None)
            if text is None:
                raise TextMismatch()
            return await self._commit(rec, core.answer(rec, participant, agree, text, self.clock()))

    async def withdraw(self, ticket_id: str, recording_id: object, participant: str) -> Recording:
        async with self._ticket_lock(ticket_id):
            rec = await self._live(ticket_id, recording_id)
            return await self._commit(rec, core.withdraw(rec, participant, self.clock()))

    async def stop(self, ticket_id: str, recording_id: object, participant: str, role: str) -> Recording:
        async with self._ticket_lock(ticket_id):
            rec = await self._live(ticket_id, recording_id)
            return await self._commit(rec, core.stop(rec, participant, role, self.clock()))

    async def current(self, ticket_id: str) -> Recording | None:
        return await self.store.live_for_ticket(ticket_id)

    # -- what the consultation does --
    async def joined(self, ticket_id: str, participant: str, role: str) -> None:
        async with self._ticket_lock(ticket_id):
            rec = await self.store.live_for_ticket(ticket_id)
            if rec is not None:
                await self._commit(rec, core.joined(rec, participant, role, self.clock()))

    async def left(self, ticket_id: str, participant: str) -> None:
        async with self._ticket_lock(ticket_id):
            rec = await self.store.live_for_ticket(ticket_id)
            if rec is not None:
                await self._commit(rec, core.left(rec, participant, self.clock()))

    async def ended(self, ticket_id: str) -> None:
        async with self._ticket_lock(ticket_id):
            rec = await self.store.live_for_ticket(ticket_id)
            if rec is not None:
                await self._commit(rec, core.end(rec, "ended", self.clock()))

    async def _failed(self, ticket_id: str, recording_id: str, reason: str) -> None:
        log.error("recording %s of ticket %s failed: %s", recording_id, ticket_id, reason)
        async with self._ticket_lock(ticket_id):
            rec = await self.store.get(recording_id)
            if rec is not None:
                await self._commit(rec, core.end(rec, "failed", self.clock()))

    # -- media follows the core --
    def directory(self, rec: Recording) -> Path:
        if not RECORDING_ID.match(rec.id):
            raise RecordingNotFound()
        return self.root / rec.id

    async def _follow(self, e: RecordingEvent) -> None:
        rec = e.recording
        hub = self.hub()
        room = consultation_room(rec.ticket)
        recorder = hub.recorder(room) if hub is not None else None
        if e.kind == "started":
            if hub is None:
                await self._failed_later(rec, "video is not running on this server")
                return
            directory = self.directory(rec)
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            directory.mkdir(mode=0o700, exist_ok=True)
            loop = asyncio.get_running_loop()

            def on_failure(reason: str) -> None:  # called by the recorder, possibly from its writer thread
                loop.call_soon_threadsafe(self._spawn, self._failed(rec.ticket, rec.id, reason))

            hub.start_recording(room, directory, on_failure=on_failure)
            self._recording.add(rec.ticket)
        elif e.kind == "paused" and recorder is not None:
            recorder.pause()
        elif e.kind == "resumed" and recorder is not None:
            recorder.resume()
        elif e.kind == "stopped":
            self._recording.discard(rec.ticket)
            if recorder is not None:
                stats = await recorder.stop()
                log.info("recording %s: %.1f s recorded, writer queue peak %d", rec.id, stats.duration,
                         stats.writer_queue_peak)
            if rec.composition is Composition.PENDING:
                self._spawn(self._compose(rec.id))

    async def _failed_later(self, rec: Recording, reason: str) -> None:
        self._spawn(self._failed(rec.ticket, rec.id, reason))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    # -- composition, outside the event loop's packet path --
    async def _compose(self, recording_id: str) -> None:
        async with self._compose_slot:
            rec = await self.store.get(recording_id)
            if rec is None or rec.composition is not Composition.PENDING or rec.state.is_live:
                return
            directory = self.directory(rec)
            ok, duration, size, empty = False, 0.0, 0, False
            with contextlib.suppress(OSError, ValueError, AttributeError):
                empty = not json.loads((directory / "tracks.json").read_text("utf-8")).get("tracks")
            if empty:
                log.info("recording %s: no frame was written, nothing to compose", rec.id)
            elif (directory / "tracks.json").exists():
                ok, result, error = await run_composer(self.composer, directory)
                output = directory / COMPOSED_FILE
                if ok:
                    duration, size = float(result.get("duration", 0.0)), output.stat().st_size
                    shutil.rmtree(directory / "tracks", ignore_errors=True)  # composed: the parts can go
                else:
                    log.error("recording %s: composition failed: %s", rec.id, error[-500:])
            else:
                log.error("recording %s: nothing to compose (no tracks.json)", rec.id)
            rec = await self.store.get(recording_id)  # may have been deleted meanwhile
            if rec is not None and rec.composition is Composition.PENDING:
                rec = core.composed(rec, ok, duration, size, empty)
                try:
                    await self.store.save(rec)
                except RecordingNotFound:  # deleted while composing: its directory goes with the next sweep
                    return
                log.info("recording %s: composition %s (%.1f s)", rec.id, rec.composition.value, duration)

    async def resume_compositions(self) -> None:
        """After a restart: recordings that were live when the process stopped are ended as failed;
        stopped ones whose composition is pending are composed (their tracks are kept until then)."""
        shared = self.settings.redis_url is not None  # other nodes may hold live recordings of their own
        for rec in await self.store.list(list(self.departments())):
            if rec.state.is_live and (not shared or (self.root / rec.id).exists()):
                rec, _ = core.end(rec, "failed", self.clock())
                await self.store.save(rec)
                log.warning("recording %s: the server stopped while it was live", rec.id)
            if not rec.state.is_live and rec.composition is Composition.PENDING:
                self._spawn(self._compose(rec.id))

    # -- retention --
    async def sweep(self, now: float | None = None) -> int:
        """Delete recordings (files and consent records) whose retention ended, and files without a record."""
        now = self.clock() if now is None else now
        deleted = 0
        for recording_id in await self.store.expired(now):
            rec = await self.store.get(recording_id)
            if rec is None:
                continue
            await self._delete(rec, "system", "expired", now)
            log.info("recording %s: retention ended, deleted", recording_id)
            deleted += 1
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.is_dir() and await self.store.get(entry.name) is None:
                    shutil.rmtree(entry, ignore_errors=True)  # no consent record: no right to keep it
                    log.warning("recording directory without a record deleted")
                    deleted += 1
        return deleted

    async def run_sweeps(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - keep sweeping after a store hiccup
                if stopping():
                    raise asyncio.CancelledError from None
                log.exception("recording sweep failed")
            await asyncio.sleep(SWEEP_INTERVAL)

    async def _delete(self, rec: Recording, actor: str, action: str, now: float) -> None:
        hub = self.hub()
        recorder = hub.recorder(consultation_room(rec.ticket)) if hub is not None else None
        if recorder is not None and rec.state.is_live:
            await recorder.stop()
        await asyncio.to_thread(shutil.rmtree, self.directory(rec), True)
        await self.store.delete(rec.id)
        await self._log_access(AccessEntry(now, actor, action, rec.id, rec.department))

    async def _log_access(self, entry: AccessEntry) -> None:
        await self.store.log_access(entry)
        if self.on_access is not None:
            await self.on_access(entry)

    # -- staff who look for recordings --
    @staticmethod
    def may_see(clerk: Clerk, rec: Recording) -> bool:
        """Leads of the recording's department, and the clerk who recorded it."""
        return rec.requested_by == clerk.username or ("lead" in clerk.roles and rec.department in clerk.departments)

    async def visible(self, clerk: Clerk) -> list[Recording]:
        mine = await self.store.list(sorted(clerk.departments))
        return [r for r in mine if self.may_see(clerk, r)]

    async def for_staff(self, clerk: Clerk, recording_id: str) -> Recording:
        """The recording if this member of staff may see it; otherwise it does not exist for them."""
        rec = await self.store.get(recording_id) if RECORDING_ID.match(recording_id) else None
        if rec is None or not self.may_see(clerk, rec):
            raise RecordingNotFound()
        return rec

    def media_file(self, rec: Recording) -> Path | None:
        path = self.directory(rec) / COMPOSED_FILE
        return path if rec.composition is Composition.DONE and path.is_file() else None

    async def log_access(self, clerk: Clerk, rec: Recording, action: str) -> None:
        log.info("recording %s: %s by staff", rec.id, action)
        await self._log_access(AccessEntry(self.clock(), clerk.username, action, rec.id, rec.department))

    async def delete(self, clerk: Clerk, recording_id: str) -> None:
        rec = await self.for_staff(clerk, recording_id)
        async with self._ticket_lock(rec.ticket):
            await self._delete(rec, clerk.username, "delete", self.clock())
        log.info("recording %s: deleted by staff", rec.id)

    async def access_log(self, clerk: Clerk) -> list[AccessEntry]:
        """Leads read the access log of the departments they lead; others get nothing."""
        if "lead" not in clerk.roles:
            raise RecordingNotFound()
        return await self.store.access_log(sorted(clerk.departments))

    async def shutdown(self) -> None:
        """The server stops: end what this process records, so that its files are complete (composition
        then runs at the next start if it cannot finish now)."""
        for ticket_id in list(self._recording):
            with contextlib.suppress(Exception):
                await self.ended(ticket_id)

    async def close(self) -> None:
        for task in list(self._jobs):
            task.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self.store.close()


async def run_composer(command: list[str], directory: Path) -> tuple[bool, dict[str, Any], str]:
    """Compose ``directory`` in a separate, niced process (``command`` + the directory). Returns whether
    ``recording.webm`` was made, the composer's JSON line, and an error text. Cancelled (the server
    stops): the composer is terminated and leaves no partial file; the job runs again at the next start."""
    proc = await asyncio.create_subprocess_exec(
        *command, str(directory), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMPOSE_TIMEOUT)
    except TimeoutError:
        await _end(proc)
        out, err = b"", b"timed out"
    except asyncio.CancelledError:
        await _end(proc)
        raise
    result: dict[str, Any] = {}
    with contextlib.suppress(ValueError, IndexError):
        result = json.loads(out.decode().strip().splitlines()[-1])
    ok = proc.returncode == 0 and (directory / COMPOSED_FILE).exists()
    return ok, result, str(result.get("error") or err.decode(errors="replace"))


async def _end(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM first: the composer then stops its ffmpeg and removes its partial file; SIGKILL if it hangs."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class TextMismatch(QueueError):
    """The consent text you answered is not the one of this recording; please read it again."""

    code = "consent_text_mismatch"
    status = 409


def view(rec: Recording, now: float) -> dict[str, Any]:
    """What participants and staff see of a recording (no display names exist in it)."""
    return {
        "id": rec.id,
        "ticket": rec.ticket,
        "department": rec.department,
        "state": rec.state.value,
        "stop_reason": rec.stop_reason,
        "requested_by": rec.requested_by,
        "purpose": rec.purpose,
        "retention_days": rec.retention_days,
        "created_at": rec.created_at,
        "expires_at": rec.expires_at,
        "stopped_at": rec.stopped_at,
        "recorded_seconds": round(rec.recorded_seconds(now), 1),
        "participants": [{"participant": p.id, "role": p.role, "answer": p.answer.value} for p in rec.participants],
        "composition": rec.composition.value,
        "duration": rec.duration,
        "size": rec.size,
    }


def consent_record(rec: Recording) -> dict[str, Any]:
    """The proof a data-protection officer asks for: every ask, answer and withdrawal, and the texts."""
    return {
        "recording": rec.id,
        "ticket": rec.ticket,
        "department": rec.department,
        "requested_by": rec.requested_by,
        "purpose": rec.purpose,
        "retention_days": rec.retention_days,
        "created_at": rec.created_at,
        "expires_at": rec.expires_at,
        "segments": [list(s) for s in rec.segments],
        "stop_reason": rec.stop_reason,
        "consents": [
            {"participant": c.participant, "role": c.role, "action": c.action, "at": c.at,
             "text_version": c.text_version, "text_sha256": c.text_sha256}
            for c in rec.consents
        ],
        "texts": [{"version": t.version, "sha256": t.sha256, "text": t.text} for t in rec.texts],
    }


