"""Staff authentication: argon2id password hashes, server-side sessions, CSRF tokens.

Login answers the same for an unknown user and a wrong password, and takes the same time (a dummy
hash is verified for unknown users). Attempts are limited per client address and per account name, both
counted in the store (so across nodes) and both before any hash is verified; an unknown name is counted
and refused exactly like an existing one. Hashing runs in a thread behind a semaphore so that a burst of
logins cannot starve the event loop (Galene bounds password hashing the same way).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..queue.errors import InvalidInput, NotAuthenticated, QueueError, RateLimited
from ..queue.model import SERVING_ROLES, Clerk
from ..rooms.departments import Department
from ..settings import Settings
from ..store.base import StaffAccount, Store

if TYPE_CHECKING:
    from ..audit import AuditLog

log = logging.getLogger("sprechstunde.auth")

SESSION_COOKIE = "sps_session"
_USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ROLES = frozenset({"clerk", "lead", "admin", "moderator"})

_hasher = PasswordHasher()

LOGIN_WINDOW = 600
"""Seconds of the fixed windows in which login attempts are counted."""
LOGIN_ATTEMPTS_PER_ACCOUNT = 10
"""Attempts per account name and window, from any address: a password guesser spread over many addresses
gets no more than this (at the price that such a guesser can keep the account's owner out for a window)."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


class LoginLimited(RateLimited):
    """Too many login attempts from an address or for an account; ``retry_after`` seconds at most."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(f"{message}; try again in {-(-retry_after // 60)} minutes")
        self.retry_after = retry_after


class LocalLoginsDisabled(QueueError):
    """Password logins are switched off (``[oidc] local_logins = false``): single sign-on only."""

    code = "local_logins_disabled"
    status = 403


@dataclass(frozen=True)
class StaffSession:
    session_id: str
    csrf: str
    clerk: Clerk
    presence: str = "available"
    """The presence the clerk last chose (available or away), kept across dashboard reloads."""


class Auth:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._hashing = asyncio.Semaphore(2)
        self.ttl = settings.session_hours * 3600
        self.local_logins = settings.oidc is None or settings.oidc.local_logins
        """Password logins allowed; off, password sessions opened before end too (single sign-on only)."""
        self.departments: Callable[[], Iterable[Department]] = lambda: settings.departments
        """The departments that exist now (the app sets the live directory's; server/store/departments.py)."""
        self.audit: AuditLog | None = None
        """Set by the app: sign-ins, sign-outs and failed sign-ins go to the audit log."""

    def clerk_from_account(self, account: StaffAccount) -> Clerk:
        configured = {d.id for d in self.departments()}
        roles = frozenset(account.roles)
        # Only a clerk or a lead serves the departments of their account; an admin-only or moderator-only
        # account serves none, whatever departments it holds (Clerk enforces this too).
        serves = frozenset(account.departments) & configured if SERVING_ROLES & roles else frozenset()
        return Clerk(
            username=account.username,
            display_name=account.display_name,
            departments=serves,
            roles=roles,
        )

    async def login(self, username: object, password: object, address: str) -> StaffSession:
        if not self.local_logins:
            raise LocalLoginsDisabled("password logins are switched off; sign in with your organisation's account")
        if not isinstance(username, str) or not isinstance(password, str):  # bad input: refused, not counted
            raise InvalidInput("username and password must be text")
        if await self.store.hit(f"login:{address}", LOGIN_WINDOW) > self.settings.login_attempts_per_address:
            raise LoginLimited("too many login attempts from this address", LOGIN_WINDOW)
        if len(password) > 1024:
            raise NotAuthenticated("wrong username or password")
        plausible = 0 < len(username) <= 64
        # Failed attempts count per account (unknown usernames alike, so the answer reveals nothing); once
        # there are too many, every attempt is refused before the password is checked, the right one too.
        failures = f"login-account:{username}"
        if plausible and await self.store.count(failures) >= LOGIN_ATTEMPTS_PER_ACCOUNT:
            log.info("staff login refused: too many failed attempts for one account")
            raise LoginLimited("too many failed login attempts for this account", LOGIN_WINDOW)
        account = await self.store.get_staff(username) if plausible else None
        async with self._hashing:
            ok = await asyncio.to_thread(
                verify_password, account.password_hash if account else _DUMMY_HASH, password
            )
        if account is None or not ok:
            if plausible:
                await self.store.hit(failures, LOGIN_WINDOW)
            log.info("staff login refused")
            if self.audit is not None:
                # An unknown name is not written down: it may be a password typed into the wrong field.
                await self.audit.record(
                    account.username if account else "system", "auth.login_failed",
                    target=account.username if account else "",
                    department=account.departments if account else None,
                    details={"reason": "password" if account else "unknown_account"},
                )
            raise NotAuthenticated("wrong username or password")
        return await self.open_session(account, "password")

    async def open_session(self, account: StaffAccount, method: str) -> StaffSession:
        """A new session for ``account``, signed in by ``method`` ("password" or "oidc")."""
        session = StaffSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), self.clerk_from_account(account))
        await self.store.put_session(
            session.session_id,
            {"username": account.username, "csrf": session.csrf, "since": time.time(), "epoch": account.session_epoch,
             "via": method},
            self.ttl,
        )
        log.info("staff session opened")
        if self.audit is not None:
            await self.audit.record(account.username, "auth.login", target=account.username,
                                    department=account.departments, details={"method": method})
        return session

    async def session(self, session_id: str | None) -> StaffSession:
        """The live session for a cookie value; the account is re-read so removal takes effect."""
        if not session_id or len(session_id) > 128:
            raise NotAuthenticated("log in first")
        data, account = await self.store.session_and_account(session_id)
        if data is None or not isinstance(data.get("username"), str):  # (a sign-in in progress is no session)
            raise NotAuthenticated("log in first (the session expired)")
        if not self.local_logins and data.get("via", "password") == "password":
            await self.store.delete_session(session_id)
            raise NotAuthenticated("password logins are switched off; sign in with your organisation's account")
        if account is None:
            await self.store.delete_session(session_id)
            raise NotAuthenticated("this account no longer exists")
        if data.get("epoch", 0) != account.session_epoch:
            await self.store.delete_session(session_id)
            raise NotAuthenticated("log in again (your account was changed)")
        return StaffSession(session_id, data["csrf"], self.clerk_from_account(account),
                            data.get("presence", "available"))

    async def remember_presence(self, session_id: str, presence: str) -> None:
        data = await self.store.get_session(session_id)
        if data is not None:
            await self.store.put_session(session_id, {**data, "presence": presence}, self.ttl)

    async def logout(self, session_id: str, clerk: Clerk | None = None) -> None:
        await self.store.delete_session(session_id)
        if clerk is not None and self.audit is not None:
            await self.audit.record(clerk.username, "auth.logout", target=clerk.username,
                                    department=clerk.departments)

    async def add_staff(self, username: str, display_name: str, password: str, departments: list[str],
                        roles: list[str] | None = None) -> StaffAccount:
        if not _USERNAME.match(username):
            raise InvalidInput("username: 1-64 letters, digits, '-', '_' or '.'")
        if len(password) < 8:
            raise InvalidInput("password: at least 8 characters")
        roles = roles or ["clerk"]
        unknown_roles = set(roles) - ROLES
        if unknown_roles:
            raise InvalidInput(f"unknown role(s): {', '.join(sorted(unknown_roles))}")
        configured = {d.id for d in self.departments()}
        unknown = set(departments) - configured
        if unknown:
            raise InvalidInput(f"unknown department(s): {', '.join(sorted(unknown))}")
        existing = await self.store.get_staff(username)
        # An existing account's password is set anew: every session it had ends (as at /admin/staff; an
        # operator resetting a compromised account from the command line must lock the old login out).
        account = StaffAccount(
            username, display_name or username, await asyncio.to_thread(hash_password, password),
            tuple(roles), tuple(departments), existing.session_epoch + 1 if existing is not None else 0,
        )
        await self.store.put_staff(account)
        return account
