"""Application assembly and lifecycle: store, service, auth, signaling, routes, background tasks."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from .appointments.service import AppointmentService
from .audit import TICKET_ACTIONS, AuditLog
from .cluster import CLUSTER, make_cluster
from .errors import is_store_unavailable, json_errors, store_unavailable
from .http import admin as admin_routes
from .http import admin_settings as admin_settings_routes
from .http import admin_staff as admin_staff_routes
from .http import admin_stats as admin_stats_routes
from .http import api
from .http import appointments as appointment_routes
from .http import recordings as recording_routes
from .http import townhall as townhall_routes
from .http.appointments import APPOINTMENTS
from .http.auth import Auth
from .http.keys import AUDIT, AUTH, RECORDINGS, ROOM, SETTINGS, STATS, STORE, TOWNHALL
from .http.metrics import setup_metrics
from .http.oidc import setup_oidc
from .mail import Mailer
from .recordings import RecordingService
from .settings import DEFAULT_CONFIG, Settings
from .signaling import Signaling
from .signaling.media import MediaSignaling
from .signaling.recording import RecordingSignaling
from .signaling.townhall import TownHallSignaling
from .stats.log import KINDS as STATS_KINDS
from .store.appointments import AppointmentStore, make_appointment_store
from .store.audit import AuditStore, make_audit_store
from .store.base import Store
from .store.departments import DepartmentDirectory, DepartmentStore, make_department_store
from .store.eventlog import EventLogStore, StatsRecorder, make_eventlog_store
from .store.recordings import RecordingStore, make_recording_store
from .store.townhall import TownHallStore, make_townhall_store
from .tasks import stop_all, stopping
from .townhalls import TownHallService
from .waitingroom import WaitingRoom

log = logging.getLogger("sprechstunde")

SIGNALING: web.AppKey[Signaling] = web.AppKey("signaling")
MEDIA: web.AppKey[MediaSignaling] = web.AppKey("media")


def make_store(settings: Settings) -> Store:
    if settings.redis_url:
        from .store.redis import RedisStore

        return RedisStore(settings.redis_url, prefix=settings.redis_prefix)
    from .store.memory import MemoryStore

    return MemoryStore(staff_file=settings.data_dir / "staff.json")


DEMO_HINT = ("Demo clerks exist (user name = the department id, e.g. '{example}'); their passwords were printed at "
             "the first start. New passwords for all of them: {command}")


async def ensure_demo_staff(settings: Settings, auth: Auth, announce: Callable[[str], None]) -> None:
    """With the demo configuration and no staff at all, create one clerk per department and print the logins;
    on later starts print how to get them again (they are not stored in a readable form)."""
    if not settings.demo:
        return
    if await auth.store.list_staff():
        example = next((d.id for d in auth.departments()), None)
        if example is not None:
            # The command must reach the same configuration (and so the same staff store) as this start.
            command = "sprechstunde staff reset-demo"
            if settings.config_path is not None and settings.config_path.resolve() != DEFAULT_CONFIG:
                command += f" --config {settings.config_path}"
            announce(DEMO_HINT.format(example=example, command=command))
        return
    announce(await create_demo_staff(auth, "Demo clerks created (shown once; manage staff with 'sprechstunde staff'):"))


async def create_demo_staff(auth: Auth, title: str) -> str:
    """One demo clerk per department (user name = department id) with a new random password; the logins."""
    lines = [title]
    for d in auth.departments():
        password = secrets.token_urlsafe(9)
        await auth.add_staff(d.id, f"Demo {d.name}", password, [d.id])
        lines.append(f"  {d.name:<20} user {d.id:<16} password {password}")
    return "\n".join(lines)


def create_app(settings: Settings, store: Store | None = None,
               announce: Callable[[str], None] = print,
               recording_store: RecordingStore | None = None,
               townhall_store: TownHallStore | None = None,
               appointment_store: AppointmentStore | None = None,
               audit_store: AuditStore | None = None,
               department_store: DepartmentStore | None = None,
               eventlog_store: EventLogStore | None = None) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=settings.max_body_bytes)
    store = store or make_store(settings)
    directory = DepartmentDirectory(
        department_store or make_department_store(settings.redis_url, settings.redis_prefix, settings.data_dir),
        settings.departments,
    )
    room = WaitingRoom(settings, store, directory=directory)
    auth = Auth(settings, store)
    auth.departments = lambda: room.departments.values()
    signaling = Signaling(settings, room, auth)
    media = MediaSignaling(settings, room, auth, signaling.sio)
    signaling.media = media
    cluster = make_cluster(settings)  # nodes on one Redis: heartbeats, pages counted across nodes, invitations
    signaling.use_cluster(cluster)
    media.cluster = cluster
    media.use_nodes(cluster, settings)  # with Redis: media rooms claimed per node, other nodes relay to them
    app[CLUSTER] = cluster
    recordings = RecordingService(
        settings,
        recording_store or make_recording_store(settings.redis_url, settings.redis_prefix, settings.data_dir),
    )
    media.recording = RecordingSignaling(media, recordings)
    recordings.departments = lambda: room.departments
    app[RECORDINGS] = recordings
    townhall = TownHallService(
        townhall_store or make_townhall_store(settings.redis_url, settings.redis_prefix, settings.data_dir), store,
        settings.data_dir,
    )
    townhall.hub = lambda: media.hub  # the stage's media and its recording live in this process's SFU
    townhall_signaling = TownHallSignaling(signaling.sio, townhall, auth, settings)
    signaling.townhall = townhall_signaling
    app[TOWNHALL] = townhall
    appointments = AppointmentService(
        settings, room,
        appointment_store or make_appointment_store(settings.redis_url, settings.redis_prefix, settings.data_dir),
        Mailer(settings.smtp) if settings.smtp else None,
    )
    room.appointments = appointments  # due appointments go ahead of walk-ins; the dashboard lists the day's
    app[APPOINTMENTS] = appointments
    audit = AuditLog(
        audit_store or make_audit_store(settings.redis_url, settings.redis_prefix, settings.data_dir),
        settings.audit_retention_days,
    )
    room.on_events(audit.on_ticket_events, frozenset(TICKET_ACTIONS))
    recordings.on_access = audit.on_recording_access
    app[AUDIT] = audit
    stats = StatsRecorder(
        eventlog_store
        or make_eventlog_store(settings.redis_url, settings.redis_prefix, settings.data_dir, settings.tz),
        room, settings.stats_retention_days,
    )
    room.on_events(stats.on_events, STATS_KINDS)  # statistics without personal data (server/stats/)
    room.on_presence(stats.on_presence)
    app[STATS] = stats
    auth.audit = audit
    app[SETTINGS] = settings
    app[STORE] = store
    app[ROOM] = room
    app[AUTH] = auth
    app[SIGNALING] = signaling
    app[MEDIA] = media
    app.add_routes(api.routes)
    app.add_routes(recording_routes.routes)
    app.add_routes(townhall_routes.routes)
    app.add_routes(appointment_routes.routes)
    app.add_routes(admin_staff_routes.routes)
    app.add_routes(admin_routes.routes)
    app.add_routes(admin_stats_routes.routes)
    app.add_routes(admin_settings_routes.routes)
    setup_metrics(app, room, signaling.socket_counts, media)  # /metrics: only when configured (docs: README)
    try:
        from .http.pages import setup_pages
    except ImportError:  # pages are optional for API-only deployments and early tests
        pass
    else:
        setup_pages(app)
    setup_oidc(app)  # staff single sign-on (/auth/oidc/*), when [oidc] is configured
    signaling.attach(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await directory.start(settings.departments)  # the TOML seeds the first start; then the store wins
        await ensure_demo_staff(settings, auth, announce)
        media.start()  # the SFU: its connections live on this process's event loop
        await media.start_nodes()  # events relayed from other nodes to the rooms this one holds
        try:
            await cluster.start()  # registered before the first page can connect
        except Exception as e:  # noqa: BLE001 - Redis down at the start: the heartbeat loop registers later
            log.warning("joining the node registry failed: %s", type(e).__name__)
        tasks = [
            asyncio.create_task(signaling.broadcast_positions(), name="positions"),
            asyncio.create_task(signaling.renew_presence(), name="presence"),
            asyncio.create_task(signaling.settle_unanswered(), name="unsettled-disconnects"),
            asyncio.create_task(signaling.settle_away(), name="pages-away"),
            asyncio.create_task(cluster.run(), name="cluster"),  # heartbeat; a dead node's pages start their grace
            asyncio.create_task(directory.watch(), name="departments"),  # other nodes' edits
            asyncio.create_task(_sweep(room), name="sweep"),
            asyncio.create_task(recordings.run_sweeps(), name="recording-retention"),
            asyncio.create_task(audit.run_sweeps(), name="audit-retention"),
            asyncio.create_task(stats.run(), name="stats"),
            asyncio.create_task(townhall_signaling.broadcast(), name="townhall"),
            asyncio.create_task(_every(600.0, townhall.sweep, "town-hall retention"), name="townhall-retention"),
            asyncio.create_task(appointments.run(), name="appointments"),  # reminders, no-shows, retention
        ]
        await recordings.resume_compositions()
        log.info("started: %d departments, %s store", len(room.departments),
                 "redis" if settings.redis_url else "memory")
        yield
        await stop_all(tasks)
        closing: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("node registry", cluster.stop),  # a clean stop is no death: leave the registry, drop our counts
            ("recordings", recordings.shutdown),  # ends live recordings while their media is still there
            ("media", media.close),
            ("recording store", recordings.close),
            ("town hall", townhall.close),
            ("appointments", appointments.close),
            ("audit log", audit.close),
            ("statistics", stats.close),
        ]
        if directory.store is not None:
            closing.append(("departments", directory.store.close))
        closing += [("store", store.close), ("node registry connections", cluster.close)]
        for what, close in closing:
            # Each step on its own: a store that does not answer at the stop must not leave the others'
            # connections open (nor keep the process from exiting).
            try:
                await close()
            except Exception as e:  # noqa: BLE001
                log.warning("closing %s at shutdown failed: %s", what, type(e).__name__)

    async def disconnect_sockets(app: web.Application) -> None:
        # Before aiohttp waits for open connections: tell clients now (they reconnect elsewhere or
        # after the restart, keeping their place), so that a stop does not wait out its timeout.
        # A share of the stop's deadline (``shutdown_seconds``, server/cli.py).
        try:
            await asyncio.wait_for(signaling.shutdown(), min(5.0, settings.shutdown_seconds * 0.3))
        except Exception:  # noqa: BLE001 - the stop goes on regardless
            log.exception("telling the sockets at shutdown failed")
        # Leave the node registry now (not a death): the cleanup below may be cut off by the deadline. With
        # several nodes this also settles the pages this node still counted (grace periods, clerks offline).
        try:
            await asyncio.wait_for(cluster.stop(), max(2.0, settings.shutdown_seconds * 0.3))
        except TimeoutError:  # the node stays registered with an old heartbeat: another node reaps it
            log.warning("leaving the node registry at shutdown took too long; another node will finish it")
        except Exception:  # noqa: BLE001 - then the other nodes take this one for dead in a few seconds
            log.exception("leaving the node registry at shutdown failed")
        # What the stop settled, to the other nodes' dashboards (several nodes); then the manager's Redis closes.
        try:
            await asyncio.wait_for(signaling.finish_stop(), max(1.0, settings.shutdown_seconds * 0.1))
        except Exception:  # noqa: BLE001 - they learn it with the tickets' next change or the presence's lapse
            log.warning("telling the other nodes what the stop settled failed or took too long")

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(disconnect_sockets)
    return app


async def _every(interval: float, job: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``job`` now and then every ``interval`` seconds; a failure is logged and the loop goes on."""
    while True:
        try:
            await job()
        except Exception as e:  # noqa: BLE001
            if stopping():
                raise asyncio.CancelledError from None
            if is_store_unavailable(e):
                store_unavailable(e)  # an outage: logged once per 10 s, no traceback
            else:
                log.exception("%s failed", what)
        await asyncio.sleep(interval)


async def _sweep(room: WaitingRoom) -> None:
    """Expire tickets of citizens who stayed away past the grace period."""
    while True:
        await asyncio.sleep(max(1.0, min(30.0, room.live("grace_seconds") / 4)))  # changeable at /admin/settings
        try:
            expired = await room.sweep()
            if expired:
                log.info("expired %d tickets", expired)
        except Exception as e:  # noqa: BLE001 - keep sweeping after a store hiccup
            if stopping():
                raise asyncio.CancelledError from None
            if is_store_unavailable(e):
                store_unavailable(e)  # an outage: logged once per 10 s, no traceback
            else:
                log.exception("sweep failed")
