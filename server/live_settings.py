"""Server-wide settings an admin changes at runtime (/admin/settings): the few [server] values operators
adjust day to day and that are safe to change while citizens wait. Pure: validation and the merge of stored
values over the configuration; the values live in the department store next to the departments
(``server.store.departments``: one extra record with its own revision, picked up by every node through the
directory's version poll).

Stored values win over the TOML's ``[server]`` values; a key never changed in the browser keeps following
the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .queue.errors import InvalidInput


@dataclass(frozen=True)
class Field:
    kind: type
    low: float
    high: float


FIELDS: dict[str, Field] = {
    "answer_seconds": Field(float, 0, 3600),
    "rejoin_seconds": Field(float, 0, 86400),
    "grace_seconds": Field(float, 0, 86400),
    "joins_per_address": Field(int, 0, 100_000),
    "join_window_seconds": Field(float, 1, 86400),
    "joins_per_trusted_address": Field(int, 0, 100_000),
}
"""Name -> type and inclusive range. ``joins_per_*`` 0: not limited."""


def current(settings: Any, stored: dict[str, Any]) -> dict[str, int | float]:
    """Every live setting: the stored value if there is a valid one, else the configuration's."""
    values: dict[str, int | float] = {}
    for name, f in FIELDS.items():
        value = stored.get(name)
        try:
            values[name] = _check(name, f, value) if value is not None else getattr(settings, name)
        except InvalidInput:  # never fail on old or foreign data: the file's value then
            values[name] = getattr(settings, name)
    return values


def _check(name: str, f: Field, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidInput(f"{name} must be a number")
    if f.kind is int and value != int(value):
        raise InvalidInput(f"{name} must be a whole number")
    if not f.low <= value <= f.high:
        raise InvalidInput(f"{name} must be between {f.low:g} and {f.high:g}")
    return int(value) if f.kind is int else float(value)


def parse_changes(body: Any) -> dict[str, int | float]:
    """A PATCH body without its revision -> the changed values, or ``InvalidInput`` (nothing changes)."""
    if not isinstance(body, dict):
        raise InvalidInput("the changes must be a JSON object")
    unknown = set(body) - set(FIELDS)
    if unknown:
        raise InvalidInput(f"unknown setting(s): {', '.join(sorted(unknown))} (known: {', '.join(FIELDS)})")
    if not body:
        raise InvalidInput("no setting to change")
    return {name: _check(name, FIELDS[name], value) for name, value in body.items()}
