"""Estimated wait: the configured service time blended with plausible observed ones, no estimate for a closed or
unstaffed department (pure functions, table-driven), and the same through the service on both stores."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.i18n import estimate_text, gettext
from server.queue.estimate import (
    PRIOR_WEIGHT,
    department_estimate,
    estimate_wait,
    mean_service_seconds,
    plausible,
)
from server.queue.model import Clerk, JoinRequest, Presence
from server.waitingroom import WaitingRoom

from .app_fixtures import make_settings

EIGHT = 8.0  # the Bürgerbüro of issue 12: 8 minutes configured

SERVICE = [  # (recent durations in seconds, configured minutes, expected typical seconds)
    ([], EIGHT, 480.0),
    ([5, 5, 5, 5], EIGHT, 480.0),  # test calls: not observations
    ([5] * 20, EIGHT, 480.0),
    ([29, 60], 1.0, (PRIOR_WEIGHT * 60 + 60) / (PRIOR_WEIGHT + 1)),  # under 30 s: never an observation
    ([90, 95], EIGHT, 480.0),  # under 20 % of 8 minutes (96 s)
    ([4 * 480 + 1], EIGHT, 480.0),  # a consultation left open: more than 4 times the configured time
    ([240], EIGHT, (PRIOR_WEIGHT * 480 + 240) / (PRIOR_WEIGHT + 1)),  # one real one moves it a little
    ([240, 240, 240], EIGHT, (PRIOR_WEIGHT * 480 + 3 * 240) / (PRIOR_WEIGHT + 3)),
    ([240] * 20, EIGHT, (PRIOR_WEIGHT * 480 + 20 * 240) / (PRIOR_WEIGHT + 20)),  # many: mostly observed
    ([200, 240, 1200, 5, 5], EIGHT, (PRIOR_WEIGHT * 480 + 3 * 240) / (PRIOR_WEIGHT + 3)),  # median of plausible
]


@pytest.mark.parametrize(("recent", "minutes", "expected"), SERVICE)
def test_typical_service_time(recent, minutes, expected):
    assert mean_service_seconds(recent, minutes) == pytest.approx(expected)


@pytest.mark.parametrize(("seconds", "configured", "expected"), [
    (5, 480, False), (29.9, 60, False), (30, 60, True), (95, 480, False), (96, 480, True),
    (1920, 480, True), (1921, 480, False),
])
def test_plausible_observations(seconds, configured, expected):
    assert plausible(seconds, configured) is expected


ESTIMATES = [  # (position, open, clerks, service seconds, expected range)
    (1, True, 1, 480, (3, 6)),
    (1, False, 1, 480, None),  # closed: no estimate, however many clerks
    (1, True, 0, 480, None),  # unstaffed
    (3, False, 0, 480, None),
    (5, True, 2, 600, estimate_wait(5, 2, 600)),
]


@pytest.mark.parametrize(("position", "is_open", "clerks", "service", "expected"), ESTIMATES)
def test_department_estimate(position, is_open, clerks, service, expected):
    assert department_estimate(position, is_open=is_open, clerks=clerks, service_seconds=service) == expected


def test_a_few_test_calls_do_not_make_an_eight_minute_department_say_one_to_two_minutes():
    """Issue 12: a few 5-second test calls made the Bürgerbüro say "1 bis 2 Minuten"."""
    typical = mean_service_seconds([5, 5, 5, 4, 6], EIGHT)
    text = estimate_text(gettext("de"), department_estimate(1, is_open=True, clerks=1, service_seconds=typical))
    assert text == "3 bis 6 Minuten"
    # Before: the median of the test calls alone, exactly what the issue saw.
    assert estimate_text(gettext("de"), estimate_wait(1, 1, 5)) == "1 bis 2 Minuten"


# -- through the service, on both stores --
ANNA = Clerk("anna", "Anna", frozenset({"buergerbuero", "bauamt", "standesamt"}))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_test_calls_leave_the_estimate_of_the_configured_time(store, tmp_path):
    clock = Clock()
    settings = make_settings(tmp_path)
    settings = replace(settings, departments=tuple(
        replace(d, service_minutes=EIGHT) if d.id == "buergerbuero" else d for d in settings.departments))
    room = WaitingRoom(settings, store, clock=clock)
    await room.set_presence(ANNA, Presence.AVAILABLE)
    for _ in range(4):  # four 5-second test calls
        ticket, _ = await room.join("buergerbuero", JoinRequest(consent=True), "10.0.0.1")
        await room.call_next(ANNA, "buergerbuero")
        await room.start(ANNA, ticket.id)
        clock.now += 5
        await room.finish(ANNA, ticket.id)
    load = await room.load("buergerbuero")
    assert load.service_seconds == 480
    assert load.to_public()["estimate_minutes"] == [3, 6]
    update = await room.queue_update("buergerbuero")
    assert update["s"] == 480


async def test_no_estimate_for_a_closed_or_unstaffed_department(store, tmp_path):
    room = WaitingRoom(make_settings(tmp_path), store, clock=Clock())
    public = {d["id"]: d for d in await room.overview()}
    assert public["buergerbuero"]["estimate_minutes"] is None  # open, nobody on duty
    await room.set_presence(ANNA, Presence.AVAILABLE)
    public = {d["id"]: d for d in await room.overview()}
    assert public["buergerbuero"]["estimate_minutes"] is not None
    assert public["standesamt"]["open"] is False and public["standesamt"]["staffed"] is True
    assert public["standesamt"]["estimate_minutes"] is None  # staffed, but closed
