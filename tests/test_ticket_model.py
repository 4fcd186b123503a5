"""Ticket.from_dict and Ticket.replace fill a frozen dataclass without its __init__ (faster): they must give
exactly what the dataclass's own constructor and dataclasses.replace give, and refuse what they refuse."""

from __future__ import annotations

import dataclasses

import pytest

from server.queue.model import Ticket, TicketState

REQUIRED = {"id": "t1", "token_hash": "h", "department": "d1", "seq": 7, "state": "waiting",
            "arrived_at": 100.0, "enqueued_at": 101.0, "origin_department": "d1"}


@pytest.mark.parametrize("extra", [
    {},
    {"name": "A", "concern": "B", "language": "en", "interpreter": True},
    {"clerk": "c", "clerk_name": "C", "called_at": 102.0, "state": "called", "times_called": 2},
    {"disconnected_at": 5.0, "rejoins": 1, "appointment_at": 9.0, "ended_by": "department_closed"},
    Ticket(**{**REQUIRED, "state": TicketState.WAITING}).to_dict(),  # every field, as the stores write it
])
def test_from_dict_equals_the_constructor(extra):
    d = {**REQUIRED, **extra}
    made = Ticket.from_dict(d)
    expected = Ticket(**{**d, "state": TicketState(d["state"])})
    assert made == expected and hash(made) == hash(expected)
    assert isinstance(made.state, TicketState) and made.to_dict() == expected.to_dict()
    assert d["state"] == (extra.get("state") or "waiting")  # the caller's dict is not changed
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.seq = 1  # type: ignore[misc]


@pytest.mark.parametrize(("d", "error"), [
    ({**REQUIRED, "unknown": 1}, TypeError),
    ({k: v for k, v in REQUIRED.items() if k != "seq"}, TypeError),
    ({**REQUIRED, "state": "no-such-state"}, ValueError),
])
def test_from_dict_refuses_what_the_constructor_refuses(d, error):
    with pytest.raises(error):
        Ticket.from_dict(d)


@pytest.mark.parametrize("changes", [
    {}, {"state": TicketState.CALLED, "clerk": "c", "called_at": 3.0}, {"disconnected_at": None, "seq": 9},
])
def test_replace_equals_dataclasses_replace(changes):
    t = Ticket.from_dict({**REQUIRED, "name": "A"})
    assert t.replace(**changes) == dataclasses.replace(t, **changes)
    assert t == Ticket.from_dict({**REQUIRED, "name": "A"})  # the original is unchanged
    assert t.replace(**changes) is not t


def test_replace_refuses_an_unknown_field():
    with pytest.raises(TypeError):
        Ticket.from_dict(REQUIRED).replace(nope=1)
