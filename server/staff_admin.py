"""Who may manage which staff account, and how: the pure rules behind /admin/staff (no I/O).

Admins manage every account, with every role. A lead manages staff of the departments they lead:

- A lead sees an account when it belongs to at least one department they lead and is not an admin's;
  every other account does not exist for them (404), admins' accounts included.
- A lead assigns only departments they lead (another department: 404) and only the roles ``clerk`` and
  ``lead``; granting ``admin`` or ``moderator`` is refused (403). Roles a lead cannot assign stay as
  they are on an account they edit (they can neither add nor remove them).
- Departments a lead does not lead stay as they are on an account shared with another department: the
  lead's list replaces only the lead's part.
- The account-wide steps (adding or removing the ``lead`` role, resetting the password, removing the
  account) need the whole account within the lead's departments: a lead of A must not make somebody a
  lead of B, nor take over (by a new password) or delete an account that B relies on.
- Nobody changes their own roles or removes their own account here, so at least one admin always
  remains and nobody locks themselves out by accident.

Changing roles and resetting a password end the account's sessions (its ``session_epoch`` goes up);
removing an account ends them too (a session of a removed account is refused on its next request).
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .queue.core import BIDI_CONTROLS, NOT_WHITESPACE
from .queue.errors import Conflict, InvalidInput, NotAuthorised, QueueError
from .store.base import StaffAccount

ROLES = frozenset({"clerk", "lead", "admin", "moderator"})
LEAD_ASSIGNABLE = frozenset({"clerk", "lead"})
USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_DISPLAY_NAME = 100
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


class StaffNotFound(QueueError):
    """No such account (or not one this account manages)."""

    code = "not_found"
    status = 404


@dataclass(frozen=True)
class Manager:
    """The lead or admin who manages staff."""

    username: str
    departments: frozenset[str] | None
    """Departments this account leads; None: admin (all)."""

    @property
    def is_admin(self) -> bool:
        return self.departments is None

    def sees(self, account: StaffAccount) -> bool:
        if self.departments is None:
            return True
        return "admin" not in account.roles and bool(self.departments.intersection(account.departments))

    def owns(self, account: StaffAccount) -> bool:
        """Whether the whole account lies within this manager's departments."""
        if self.departments is None:
            return True
        return self.sees(account) and set(account.departments) <= self.departments

    def assignable_roles(self) -> frozenset[str]:
        return ROLES if self.departments is None else LEAD_ASSIGNABLE

    def may(self, account: StaffAccount) -> dict[str, bool]:
        """What the page offers for an account this manager sees."""
        own = self.owns(account)
        me = account.username == self.username
        return {"edit": True, "roles": not me, "lead_role": own and not me, "password": own,
                "remove": own and not me}


@dataclass(frozen=True)
class NewStaff:
    username: str
    display_name: str
    roles: tuple[str, ...]
    departments: tuple[str, ...]
    password: str | None
    """None: generate one (shown once)."""


@dataclass(frozen=True)
class StaffChange:
    display_name: str | None = None
    roles: frozenset[str] | None = None
    departments: frozenset[str] | None = None


def generate_password() -> str:
    return secrets.token_urlsafe(12)


# -- parsing (wire -> values) --
def _only(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")


def is_control_char(char: str) -> bool:
    """What a staff display name must not contain (citizens read it: "Anna Amt ruft Sie auf"): control
    characters (Cc), lone surrogates (Cs) and bidi overrides/isolates. Whitespace is folded before."""
    return char in BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cs")


def clean_display_name(value: str) -> str:
    """A display name from elsewhere (an identity provider's claim) made to follow the same rule as one
    typed at /admin/staff: whitespace folded, control characters dropped, cut to ``MAX_DISPLAY_NAME``.
    Empty when nothing is left (the caller falls back to the username)."""
    value = "".join(c for c in value if c not in NOT_WHITESPACE)  # controls, though str.split folds them
    kept = "".join(c for c in " ".join(value.split()) if not is_control_char(c))
    return " ".join(kept.split())[:MAX_DISPLAY_NAME].strip()


def _display_name(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput("display_name must be text")
    for char in NOT_WHITESPACE.intersection(value):
        raise InvalidInput(f"display_name contains a control character (U+{ord(char):04X}); please remove it")
    name = " ".join(value.split())
    if not name or len(name) > MAX_DISPLAY_NAME:
        raise InvalidInput(f"display_name: 1-{MAX_DISPLAY_NAME} characters")
    for char in name:
        if is_control_char(char):
            raise InvalidInput(f"display_name contains a control character (U+{ord(char):04X}); please remove it")
    return name


def _names(value: object, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 100:
        raise InvalidInput(f"{what} must be a list of ids")
    return frozenset(value)


def _roles(value: object) -> frozenset[str]:
    roles = _names(value, "roles")
    unknown = roles - ROLES
    if unknown:
        raise InvalidInput(f"unknown role(s): {', '.join(sorted(unknown))}")
    if not roles:
        raise InvalidInput("roles: at least one")
    return roles


def parse_password(value: object) -> str:
    if not isinstance(value, str) or not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        raise InvalidInput(f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return value


def parse_new(body: Mapping[str, Any]) -> NewStaff:
    _only(body, {"username", "display_name", "roles", "departments", "password"})
    username = body.get("username")
    if not isinstance(username, str) or not USERNAME.match(username):
        raise InvalidInput("username: 1-64 letters, digits, '-', '_' or '.'")
    display_name = _display_name(body.get("display_name") or username)
    roles = _roles(body.get("roles", ["clerk"]))
    departments = _names(body.get("departments", []), "departments")
    password = body.get("password")
    return NewStaff(username, display_name, tuple(sorted(roles)), tuple(sorted(departments)),
                    None if password is None or password == "" else parse_password(password))


def parse_change(body: Mapping[str, Any]) -> StaffChange:
    _only(body, {"display_name", "roles", "departments"})
    if not body:
        raise InvalidInput("nothing to change")
    return StaffChange(
        _display_name(body["display_name"]) if "display_name" in body else None,
        _roles(body["roles"]) if "roles" in body else None,
        _names(body["departments"], "departments") if "departments" in body else None,
    )


# -- decisions --
def _check_departments(manager: Manager, requested: Collection[str], known: Collection[str]) -> None:
    if manager.departments is None:
        unknown = set(requested) - set(known)
        if unknown:
            raise InvalidInput(f"unknown department(s): {', '.join(sorted(unknown))}")
        return
    if not set(requested) <= manager.departments or not set(requested) <= set(known):
        raise StaffNotFound("no such department among yours")


def _check_roles_grantable(manager: Manager, added: Collection[str]) -> None:
    refused = set(added) - manager.assignable_roles()
    if refused:
        raise NotAuthorised(f"a lead cannot grant the role(s) {', '.join(sorted(refused))}")


def plan_create(manager: Manager, new: NewStaff, known_departments: Collection[str],
                existing: StaffAccount | None) -> None:
    """Raise unless ``manager`` may create this account."""
    _check_roles_grantable(manager, new.roles)
    _check_departments(manager, new.departments, known_departments)
    if not manager.is_admin and not new.departments:
        raise InvalidInput("departments: at least one of yours")
    if existing is not None:
        raise Conflict(f"the username {new.username} is taken")


def visible(manager: Manager, account: StaffAccount | None) -> StaffAccount:
    if account is None or not manager.sees(account):
        raise StaffNotFound("no such member of staff")
    return account


def plan_update(manager: Manager, account: StaffAccount, change: StaffChange,
                known_departments: Collection[str]) -> tuple[StaffAccount, list[str]]:
    """The account after ``change`` and the names of the fields that changed; raises if not allowed."""
    visible(manager, account)
    changed: list[str] = []
    display_name = account.display_name
    if change.display_name is not None and change.display_name != account.display_name:
        display_name = change.display_name
        changed.append("display_name")
    departments = set(account.departments)
    if change.departments is not None:
        _check_departments(manager, change.departments, known_departments)
        scope = manager.departments
        outside = departments - scope if scope is not None else set()
        departments = outside | set(change.departments)
        if departments != set(account.departments):
            changed.append("departments")
    roles = set(account.roles)
    if change.roles is not None:
        requested = set(change.roles)
        if manager.departments is not None:
            # Roles a lead cannot assign stay as they are; the lead's part is clerk and lead.
            kept = roles - LEAD_ASSIGNABLE
            _check_roles_grantable(manager, requested - kept)
            requested = kept | requested
        if requested != roles:
            if account.username == manager.username:
                raise NotAuthorised("you cannot change your own roles")
            roles = requested
            changed.append("roles")
    lead_before, lead_after = "lead" in account.roles, "lead" in roles
    if manager.departments is not None:
        if not departments & manager.departments:
            raise InvalidInput("departments: at least one of yours (remove the account instead)")
        if lead_before != lead_after:
            # The lead role is account-wide: only for an account entirely within this lead's departments.
            # (Adding one's own department to a lead of another, or taking it away, stays within one's own.)
            if not (set(account.departments) | departments) <= manager.departments:
                raise NotAuthorised("the lead role of an account shared with other departments is the admins'")
    if not roles:
        raise InvalidInput("roles: at least one")
    epoch = account.session_epoch + (1 if "roles" in changed else 0)
    return StaffAccount(account.username, display_name, account.password_hash, tuple(sorted(roles)),
                        tuple(sorted(departments)), epoch), changed


def check_password_reset(manager: Manager, account: StaffAccount | None) -> StaffAccount:
    account = visible(manager, account)
    if not manager.owns(account):
        raise NotAuthorised("the password of an account shared with other departments is the admins'")
    return account


def check_remove(manager: Manager, account: StaffAccount | None) -> StaffAccount:
    account = visible(manager, account)
    if account.username == manager.username:
        raise NotAuthorised("you cannot remove your own account")
    if not manager.owns(account):
        raise NotAuthorised("an account shared with other departments is removed by an admin "
                            "(remove your departments from it instead)")
    return account
