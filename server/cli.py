"""Command line: ``sprechstunde serve`` and ``sprechstunde staff add|remove|list|reset-demo``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import logging
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING

from . import gcpolicy
from .errors import STORE_ERRORS
from .queue.errors import QueueError
from .settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("sprechstunde")

LISTEN_BACKLOG = 65535
"""Connections the kernel may queue before we accept them. A reconnect storm of thousands of pages
overflows aiohttp's default of 128; Linux caps this at ``net.core.somaxconn`` (4,096 on current
kernels), which municipal IT raises for more (README, "Many waiting citizens")."""


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, host=getattr(args, "host", None), port=getattr(args, "port", None))


def serve(args: argparse.Namespace) -> int:
    from .app import create_app

    settings = _settings(args)
    # Everything this process (and the ffmpeg it starts) creates is its own: recordings, composed files and
    # their chapters came out 0644 (inside 0700 directories; found by probing). Nothing it writes is for others.
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    gcpolicy.tune()
    app.cleanup_ctx.append(gcpolicy.collections_ctx(settings.full_gc_interval))
    print(f"Sprechstunde on http://{settings.host}:{settings.port}/ "
          f"({'redis' if settings.redis_url else 'embedded memory'} store)", flush=True)
    # uvloop: the SFU's per-packet path (server/media) runs on this loop (measured several times cheaper).
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_run(app, settings))
    return 0


async def _run(app: web.Application, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then stop within ``shutdown_seconds``.

    aiohttp's ``run_app`` stops in order (listener closed, ``on_shutdown``, open requests awaited, cleanup)
    but waits up to 60 s for open requests, and a hung one (half a POST body, a long poll) holds it there.
    Here the requests get a share of the deadline, the cleanup the rest, and a watchdog thread ends the
    process at the deadline should anything still hang (a stuck thread, a cleanup step)."""
    from aiohttp import web

    from .http.accesslog import AccessLogger

    deadline = settings.shutdown_seconds
    # aiohttp waits this long for each open connection's request after the sockets were told.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=deadline * REQUESTS_SHARE,
                           access_log_format='"%r" %s %b %Tfs', access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
    await site.start()
    metrics_runner = None
    if settings.metrics_port:  # /metrics alone, on its own address (server/http/metrics.py)
        from .http.metrics import start_metrics_site

        metrics_runner = await start_metrics_site(app, settings.metrics_host, settings.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("stopping: exiting within %g s", deadline)
        watchdog = threading.Timer(deadline, _exit_now, (deadline,))
        watchdog.daemon = True
        watchdog.start()
        if metrics_runner is not None:  # first, and quickly: a scrape in flight is cut off (its shutdown_timeout)
            await metrics_runner.cleanup()
        try:
            # The listener closes first: new connections are refused from here on.
            await asyncio.wait_for(runner.cleanup(), deadline * CLEANUP_SHARE)
        except TimeoutError:
            log.warning("stopping: cleanup did not finish within %g s; exiting anyway", deadline * CLEANUP_SHARE)
        log.info("stopped")


LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})
"""What listening on a host and port fails with when they are wrong (taken, not this machine's, privileged)."""
REQUESTS_SHARE = 0.4
"""Share of ``shutdown_seconds`` that open HTTP requests get to finish before they are cancelled."""
CLEANUP_SHARE = 0.85
"""Share of ``shutdown_seconds`` for the whole orderly stop; the watchdog ends the process at the full one."""


def _exit_now(deadline: float) -> None:
    """The last resort at the deadline: something still hangs (a thread, a cleanup step); exit regardless."""
    log.warning("stopping: still running after %g s; exiting now", deadline)
    logging.shutdown()
    os._exit(0)


CLI_ACTOR = "cli"
"""The audit log's actor for changes made with ``sprechstunde staff`` (the operator at the server's shell)."""


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise SystemExit("passwords differ")
    return first


async def _staff(args: argparse.Namespace) -> int:
    from .app import make_store
    from .audit import AuditLog
    from .http.auth import Auth
    from .store.audit import make_audit_store
    from .store.departments import DepartmentDirectory, make_department_store

    settings = _settings(args)
    store = make_store(settings)
    directory = DepartmentDirectory(make_department_store(settings.redis_url, settings.redis_prefix, settings.data_dir))
    # Changes of accounts from the command line are in the audit log like those at /admin/staff, by "cli".
    audit = AuditLog(make_audit_store(settings.redis_url, settings.redis_prefix, settings.data_dir),
                     settings.audit_retention_days)
    try:
        await directory.start(settings.departments)  # the departments as managed at /admin (the TOML seeds)
        auth = Auth(settings, store)
        auth.departments = lambda: directory.departments.values()
        if args.action == "add":
            existing = await store.get_staff(args.username)
            # An existing account keeps what the command does not give (a clerk of one department must not get
            # every department's citizens because the update left --departments out).
            roles = ([r for r in args.roles.split(",") if r] if args.roles is not None
                     else list(existing.roles) if existing is not None else ["clerk"])
            if args.departments is not None:
                departments = [d for d in args.departments.split(",") if d]
            elif existing is not None:  # (those removed at /admin since are dropped, not a reason to refuse)
                departments = [d for d in existing.departments if d in directory.departments]
            elif {"clerk", "lead"} & set(roles):
                # All departments by default only for someone who serves or leads them: a moderator or an
                # admin given no departments must not get every queue (and every citizen's concern).
                departments = list(directory.departments)
            else:
                departments = []
            name = args.name or (existing.display_name if existing is not None else args.username)
            account = await auth.add_staff(args.username, name, _read_password(args), departments, roles)
            details: dict[str, object] = {"roles": list(account.roles), "departments": list(account.departments),
                                          "password_set": True}  # the command always sets one
            if existing is not None:
                details.update(roles_before=list(existing.roles), departments_before=list(existing.departments))
            await audit.record(CLI_ACTOR, "staff.created" if existing is None else "staff.updated",
                               target=account.username,
                               department=set(account.departments) | set(existing.departments if existing else ()),
                               details=details)
            print(f"saved {account.username}: {', '.join(account.departments)} ({', '.join(account.roles)})")
        elif args.action == "reset-demo":
            if not settings.demo:
                print("reset-demo is for the demo configuration only (demo = true)", file=sys.stderr)
                return 1
            from .app import create_demo_staff

            print(await create_demo_staff(auth, "Demo clerks (new passwords):"))
            for d in auth.departments():
                await audit.record(CLI_ACTOR, "staff.password_reset", target=d.id, department=d.id,
                                   details={"demo": True})
        elif args.action == "remove":
            existing = await store.get_staff(args.username)
            if not await store.delete_staff(args.username):
                print(f"no staff account {args.username}", file=sys.stderr)
                return 1
            await audit.record(CLI_ACTOR, "staff.removed", target=args.username,
                               department=existing.departments if existing else None,
                               details={"roles": list(existing.roles)} if existing else None)
            print(f"removed {args.username}")
        else:
            for a in await store.list_staff():
                print(f"{a.username}\t{a.display_name}\t{','.join(a.roles)}\t{','.join(a.departments)}")
        return 0
    finally:
        await audit.store.close()
        if directory.store is not None:
            await directory.store.close()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sprechstunde", description="Video office hours and waiting rooms")
    parser.add_argument("--config", help="TOML configuration (default: $SPRECHSTUNDE_CONFIG or the demo)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="start the server")
    p_serve.add_argument("--host")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    p_staff = sub.add_parser("staff", help="manage staff accounts")
    p_staff.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    staff_sub = p_staff.add_subparsers(dest="action", required=True)
    p_add = staff_sub.add_parser("add", help="add or update an account (password from stdin or a prompt)")
    p_add.add_argument("username")
    p_add.add_argument("--name", help="display name shown to citizens")
    p_add.add_argument("--departments", help="comma-separated department ids (default: all for clerks and leads, "
                       "none for other roles)")
    p_add.add_argument("--roles", help="comma-separated: clerk, lead, admin, moderator (default: clerk)")
    p_add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p_remove = staff_sub.add_parser("remove", help="remove an account")
    p_remove.add_argument("username")
    p_list = staff_sub.add_parser("list", help="list accounts")
    p_demo = staff_sub.add_parser("reset-demo", help="demo only: new passwords for the demo clerks, printed")
    for p in (p_add, p_remove, p_list, p_demo):
        p.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        return asyncio.run(_staff(args))
    except (ConfigError, QueueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except STORE_ERRORS as e:  # Redis not there at the start: a message, not a traceback (the URL may hold a password)
        print(f"error: the shared store (Redis, redis_url / REDIS_URL) does not answer: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    except OSError as e:
        # A host that does not resolve, a port taken or not ours to listen on: said plainly. Any other OSError
        # (a data_dir not writable, a full disk) keeps its traceback: the hint below would mislead.
        if not (isinstance(e, socket.gaierror) or e.errno in LISTEN_ERRNOS):
            raise
        print(f"error: cannot start: {e} (check host and port: [server], --host/--port or SPRECHSTUNDE_HOST / "
              "SPRECHSTUNDE_PORT)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
