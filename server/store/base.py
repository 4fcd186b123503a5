"""The storage interface of the waiting room. Two implementations: memory (embedded) and Redis.

Everything that must be atomic goes through :meth:`Store.transaction`: the function given to it
reads through a :class:`Tx` (reads are watched), decides with the pure core, and buffers writes with
:meth:`Tx.put`. The store commits all writes at once, or, when something it read changed meanwhile
(another clerk, another node), runs the function again. So two clerks pressing "next" at once get
two different citizens on either store. Both stores pass ``tests/store_contract.py``.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..queue.model import Presence, Ticket

T = TypeVar("T")

TERMINAL_RETENTION_SECONDS = 24 * 3600
"""Finished tickets (and their personal data) are deleted this long after they end."""


@dataclass(frozen=True)
class StaffAccount:
    username: str
    display_name: str
    password_hash: str
    """argon2id hash."""
    roles: tuple[str, ...]
    departments: tuple[str, ...]
    session_epoch: int = 0
    """Raised to end every session of the account (removed roles, reset password): a session records the
    epoch it was opened in and is valid only while the account still has it."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "display_name": self.display_name,
            "password_hash": self.password_hash,
            "roles": list(self.roles),
            "departments": list(self.departments),
            "session_epoch": self.session_epoch,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StaffAccount:
        return cls(
            d["username"], d["display_name"], d["password_hash"], tuple(d["roles"]), tuple(d["departments"]),
            int(d.get("session_epoch", 0)),
        )


class Tx(abc.ABC):
    """One attempt of an atomic unit of work."""

    @abc.abstractmethod
    async def waiting(self, department: str) -> list[tuple[int, str]]:
        """Waiting tickets of a department as (seq, id), in arrival order. Watched. Reads the whole queue:
        commands use :meth:`waiting_head` and :meth:`waiting_count` instead (O(log n) each)."""

    @abc.abstractmethod
    async def waiting_head(self, department: str, k: int) -> list[tuple[int, str]]:
        """The first ``k`` waiting tickets of a department as (seq, id), in arrival order. Watched."""

    @abc.abstractmethod
    async def waiting_count(self, department: str) -> int:
        """How many tickets wait in a department. Watched."""

    @abc.abstractmethod
    async def ticket(self, ticket_id: str) -> Ticket | None:
        """A ticket by id. Watched."""

    @abc.abstractmethod
    def put(self, ticket: Ticket) -> None:
        """Write a ticket at commit; the store keeps its indexes (waiting, active, token) in step."""

    @abc.abstractmethod
    async def counter(self, key: str) -> int:
        """A counter (the one ``Store.count`` reads; 0 when unset or lapsed). Watched."""

    @abc.abstractmethod
    def set_counter(self, key: str, value: int, ttl: float) -> None:
        """Set a counter at commit, lapsing ``ttl`` seconds after."""


class Store(abc.ABC):
    """Shared live state: tickets, queues, presence, sessions, staff accounts, counters."""

    # -- tickets and queues --
    @abc.abstractmethod
    async def transaction(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``fn`` atomically (retrying it on conflict) and commit what it put."""

    @abc.abstractmethod
    async def next_seq(self) -> int:
        """A new, globally increasing arrival sequence number."""

    @abc.abstractmethod
    async def get_ticket(self, ticket_id: str) -> Ticket | None: ...

    @abc.abstractmethod
    async def get_tickets(self, ticket_ids: list[str]) -> list[Ticket]:
        """The tickets that exist, in the order asked."""

    @abc.abstractmethod
    async def ticket_id_for_token(self, token_hash: str) -> str | None: ...

    @abc.abstractmethod
    async def ticket_for_token(self, token_hash: str) -> Ticket | None:
        """The ticket a token hash belongs to, in one look-up (each page's connect asks it)."""

    @abc.abstractmethod
    async def waiting(self, department: str) -> list[tuple[int, str]]:
        """(seq, id) of waiting tickets, in arrival order."""

    @abc.abstractmethod
    async def waiting_seqs(self, department: str) -> list[int]:
        """The arrival seqs of a department's waiting tickets, ascending: the ``queue`` update's content, read
        once per department and broadcast interval (in Redis as one compact reply, not as id/score pairs)."""

    @abc.abstractmethod
    async def waiting_counts(self, departments: list[str]) -> dict[str, int]: ...

    @abc.abstractmethod
    async def position(self, department: str, ticket_id: str, seq: int) -> int | None:
        """1-based place of a waiting ticket in its department's queue (None: not waiting there), without
        reading the whole queue: a reconnect storm asks this once per page."""

    @abc.abstractmethod
    async def active(self, department: str) -> list[str]:
        """Ids of called and in-consultation tickets of a department."""

    @abc.abstractmethod
    async def disconnected_before(self, cutoff: float) -> list[str]:
        """Ids of live tickets whose citizen has been disconnected since before ``cutoff``."""

    # -- clerks --
    @abc.abstractmethod
    async def set_presence(self, username: str, departments: list[str], presence: Presence, ttl: float) -> None:
        """Record a clerk's presence; it lapses to offline after ``ttl`` seconds unless renewed."""

    @abc.abstractmethod
    async def presences(self, department: str) -> dict[str, Presence]:
        """Presence of the clerks of a department who are not offline."""

    async def presences_of(self, departments: list[str]) -> dict[str, dict[str, Presence]]:
        """``presences`` of several departments at once (for /metrics); a store over the network overrides
        it with one batched read."""
        return {d: await self.presences(d) for d in departments}

    @abc.abstractmethod
    async def record_service(self, department: str, seconds: float) -> None:
        """Remember a consultation duration (only the last few are kept)."""

    @abc.abstractmethod
    async def recent_services(self, department: str) -> list[float]: ...

    # -- sessions, staff, limits --
    @abc.abstractmethod
    async def put_session(self, session_id: str, data: dict[str, Any], ttl: float) -> None: ...

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> dict[str, Any] | None: ...

    async def session_and_account(self, session_id: str) -> tuple[dict[str, Any] | None, StaffAccount | None]:
        """A session and the account it names (None, None without a session): every staff request and socket
        event reads both; Redis does it in one round trip."""
        data = await self.get_session(session_id)
        username = data.get("username") if data is not None else None
        return data, (await self.get_staff(username) if isinstance(username, str) else None)

    @abc.abstractmethod
    async def delete_session(self, session_id: str) -> None: ...

    @abc.abstractmethod
    async def put_staff(self, account: StaffAccount) -> None: ...

    @abc.abstractmethod
    async def get_staff(self, username: str) -> StaffAccount | None: ...

    @abc.abstractmethod
    async def delete_staff(self, username: str) -> bool: ...

    @abc.abstractmethod
    async def list_staff(self) -> list[StaffAccount]: ...

    @abc.abstractmethod
    async def hit(self, key: str, window: float) -> int:
        """Count one event under ``key`` in a fixed window of ``window`` seconds; return the count."""

    @abc.abstractmethod
    async def count(self, key: str) -> int:
        """The count of the current window of ``key`` (0 when none), without counting anything."""

    @abc.abstractmethod
    async def window_left(self, key: str) -> float:
        """Seconds until the current window of ``key`` ends (0 when there is none)."""

    @abc.abstractmethod
    async def close(self) -> None: ...
