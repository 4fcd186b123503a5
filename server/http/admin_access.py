"""Who may administer what: the one role check behind every /admin page and /api/admin route.

Roles (server/http/auth.py ROLES): ``clerk`` serves their departments; ``lead`` manages the departments
they lead (the departments of their account); ``admin`` manages all departments, all staff and server-wide
settings; ``moderator`` runs town-hall events. For anybody without ``lead`` or ``admin``, /admin does not
exist (404, as for recordings), so that the route list reveals nothing; a lead asking about another
department gets the same 404.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..queue.errors import QueueError
from ..queue.model import Clerk
from .api import staff_session
from .auth import StaffSession


class NotFoundForRole(QueueError):
    """The page or the department is not there for this account."""

    code = "not_found"
    status = 404


@dataclass(frozen=True)
class AdminScope:
    session: StaffSession
    is_admin: bool
    departments: frozenset[str] | None
    """Departments this account manages; None: all (admin)."""

    @property
    def clerk(self) -> Clerk:
        return self.session.clerk

    def may_manage(self, department_id: str) -> bool:
        return self.departments is None or department_id in self.departments

    def check(self, department_id: str) -> None:
        """Raise 404 unless this account manages ``department_id``."""
        if not self.may_manage(department_id):
            raise NotFoundForRole("not found")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise NotFoundForRole("not found")


def scope_of(session: StaffSession) -> AdminScope | None:
    roles = session.clerk.roles
    if "admin" in roles:
        return AdminScope(session, True, None)
    if "lead" in roles:
        return AdminScope(session, False, frozenset(session.clerk.departments))
    return None


async def admin_scope(request: web.Request) -> AdminScope:
    """The signed-in lead or admin (CSRF checked on unsafe methods); 401 without a session, 404 otherwise."""
    session = await staff_session(request)
    scope = scope_of(session)
    if scope is None:
        raise NotFoundForRole("not found")
    return scope
