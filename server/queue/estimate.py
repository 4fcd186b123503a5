"""Estimated wait, derived from the configured and the observed service times, staffed clerks and position.

The result is a range in whole minutes, rounded to steps that do not pretend precision. The same
formula runs in the waiting page (web/static/js/estimate.js) on the compact queue update, so it is
kept deliberately simple; tests pin both to the same table.

The typical service time is the department's configured one until enough real consultations were seen:
observations are blended in with the weight of their number against ``PRIOR_WEIGHT`` imagined consultations
of the configured length, and implausible ones (a 5-second test call, a consultation left open over lunch)
are not observations at all. A closed or unstaffed department has no estimate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

RECENT_SERVICES = 20
"""How many recent consultation durations feed the typical service time."""
PRIOR_WEIGHT = 5
"""The configured service time counts as this many observations: three real ones move it less than half-way."""
MIN_SERVICE_SECONDS = 30.0
"""Shorter consultations are not observations (test calls, wrong department, nobody there)."""
MIN_SERVICE_FRACTION = 0.2
"""Nor are consultations shorter than this fraction of the configured time."""
MAX_SERVICE_FACTOR = 4.0
"""Nor are consultations longer than this many times the configured time (one left open by mistake)."""


def plausible(seconds: float, configured_seconds: float) -> bool:
    """Whether an observed consultation length tells anything about the department's typical one."""
    low = max(MIN_SERVICE_SECONDS, MIN_SERVICE_FRACTION * configured_seconds)
    return low <= seconds <= MAX_SERVICE_FACTOR * configured_seconds


def mean_service_seconds(recent: Sequence[float], default_minutes: float) -> float:
    """The typical consultation length: the configured one (``default_minutes``) blended with the median of
    the plausible recent ones, weighted by how many there are against ``PRIOR_WEIGHT``."""
    configured = default_minutes * 60.0
    usable = [s for s in recent if plausible(s, configured)]
    if not usable:
        return configured
    observed = float(statistics.median(usable))
    return (PRIOR_WEIGHT * configured + len(usable) * observed) / (PRIOR_WEIGHT + len(usable))


def _round_minutes(minutes: float) -> int:
    if minutes <= 10:
        return max(0, math.ceil(minutes))
    step = 5 if minutes <= 60 else 15
    return int(math.ceil(minutes / step) * step)


def estimate_wait(position: int, clerks: int, service_seconds: float) -> tuple[int, int] | None:
    """Range (low, high) in minutes until a citizen at ``position`` is called; None if no clerk.

    ``clerks`` counts available plus busy clerks of the department. With ``k`` clerks and an
    average service time ``s``, the citizen at position ``p`` is called after roughly
    ``(p - 1) / k`` services complete, plus the remainder of the current ones.
    """
    if clerks <= 0:
        return None
    if position <= 0:
        return (0, 0)
    minutes = service_seconds / 60.0
    central = ((position - 1) / clerks + 0.5) * minutes
    return (_round_minutes(central * 0.75), _round_minutes(central * 1.25 + 1))


def department_estimate(position: int, *, is_open: bool, clerks: int,
                        service_seconds: float) -> tuple[int, int] | None:
    """What a citizen is told: no estimate at all for a closed or unstaffed department (nobody knows when
    the queue moves again), else ``estimate_wait``."""
    if not is_open:
        return None
    return estimate_wait(position, clerks, service_seconds)
