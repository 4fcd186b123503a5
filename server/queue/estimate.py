"""Estimated wait, derived from recent service times, staffed clerks and position.

The result is a range in whole minutes, rounded to steps that do not pretend precision. The same
formula runs in the waiting page (web/static/js/estimate.js) on the compact queue update, so it is
kept deliberately simple; tests pin both to the same table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

RECENT_SERVICES = 20
"""How many recent consultation durations feed the average."""


def mean_service_seconds(recent: Sequence[float], default_minutes: float) -> float:
    """Median of recent durations (robust against one very long consultation), else the default."""
    usable = [s for s in recent if s > 0]
    if len(usable) < 3:
        return default_minutes * 60.0
    return float(statistics.median(usable))


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
