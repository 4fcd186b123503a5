"""Command line: ``sprechstunde serve`` and ``sprechstunde staff add|remove|list``."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys

from . import gcpolicy
from .queue.errors import QueueError
from .settings import ConfigError, Settings, load_settings

LISTEN_BACKLOG = 65535
"""Connections the kernel may queue before we accept them. A reconnect storm of thousands of pages
overflows aiohttp's default of 128; Linux caps this at ``net.core.somaxconn`` (4,096 on current
kernels), which municipal IT raises for more (README, "Many waiting citizens")."""


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, host=getattr(args, "host", None), port=getattr(args, "port", None))


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app
    from .http.accesslog import AccessLogger

    settings = _settings(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiohttp's access log would record paths; ours hold no secrets (tokens travel in headers or the
    # URL fragment), but we keep it terse and free of client addresses.
    app = create_app(settings)
    gcpolicy.tune()
    app.cleanup_ctx.append(gcpolicy.collections_ctx(settings.full_gc_interval))
    print(f"Sprechstunde on http://{settings.host}:{settings.port}/ "
          f"({'redis' if settings.redis_url else 'embedded memory'} store)", flush=True)
    # uvloop: the SFU's per-packet path (server/media) runs on this loop (measured several times cheaper).
    import uvloop

    web.run_app(app, host=settings.host, port=settings.port, print=None, backlog=LISTEN_BACKLOG,
                access_log_format='"%r" %s %b %Tfs', access_log_class=AccessLogger,
                loop=uvloop.new_event_loop())
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise SystemExit("passwords differ")
    return first


async def _staff(args: argparse.Namespace) -> int:
    from .app import make_store
    from .http.auth import Auth

    settings = _settings(args)
    store = make_store(settings)
    try:
        auth = Auth(settings, store)
        if args.action == "add":
            departments = [d for d in (args.departments or "").split(",") if d]
            if not departments:
                departments = [d.id for d in settings.departments]
            roles = [r for r in (args.roles or "clerk").split(",") if r]
            account = await auth.add_staff(args.username, args.name or args.username, _read_password(args),
                                           departments, roles)
            print(f"saved {account.username}: {', '.join(account.departments)} ({', '.join(account.roles)})")
        elif args.action == "remove":
            if not await store.delete_staff(args.username):
                print(f"no staff account {args.username}", file=sys.stderr)
                return 1
            print(f"removed {args.username}")
        else:
            for a in await store.list_staff():
                print(f"{a.username}\t{a.display_name}\t{','.join(a.roles)}\t{','.join(a.departments)}")
        return 0
    finally:
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
    p_add.add_argument("--departments", help="comma-separated department ids (default: all)")
    p_add.add_argument("--roles", help="comma-separated: clerk, lead, admin, moderator (default: clerk)")
    p_add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p_remove = staff_sub.add_parser("remove", help="remove an account")
    p_remove.add_argument("username")
    p_list = staff_sub.add_parser("list", help="list accounts")
    for p in (p_add, p_remove, p_list):
        p.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        return asyncio.run(_staff(args))
    except (ConfigError, QueueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
