"""A fixed histogram for durations: medians and 90th percentiles from counters that add up.

Bucket ``i`` covers ``[lower(i), upper(i))``: 5 s wide below one minute, then each 5 % wider than the one
before. A quantile is the midpoint of the bucket holding the nearest-rank sample, so it is off from the
exact nearest-rank quantile of the same samples by at most ``max(2.5 s, 2.5 % of it)`` (``within_bound``).
Counts per bucket add up across hours, days and departments, which is what makes a year's figures cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

LINEAR_LIMIT = 60.0
LINEAR_WIDTH = 5.0
RATIO = 1.05
_LINEAR_BUCKETS = int(LINEAR_LIMIT / LINEAR_WIDTH)
_LOG_RATIO = math.log(RATIO)
MAX_BUCKET = 200
"""Its lower edge is about 6.7 days: anything longer lands there (and is outside the bound)."""
ABSOLUTE_BOUND = LINEAR_WIDTH / 2
RELATIVE_BOUND = (RATIO - 1) / 2


def lower(i: int) -> float:
    if i < _LINEAR_BUCKETS:
        return i * LINEAR_WIDTH
    return LINEAR_LIMIT * RATIO ** (i - _LINEAR_BUCKETS)


def upper(i: int) -> float:
    return lower(i + 1)


def bucket(seconds: float) -> int:
    """The bucket of a duration (negative and NaN count as 0)."""
    if not seconds > 0:
        return 0
    if seconds < LINEAR_LIMIT:
        return int(seconds // LINEAR_WIDTH)
    i = _LINEAR_BUCKETS + int(math.log(seconds / LINEAR_LIMIT) / _LOG_RATIO)
    # Floating point may put a value on a bucket edge one off: settle it against the edges themselves.
    while i > _LINEAR_BUCKETS and lower(i) > seconds:
        i -= 1
    while i < MAX_BUCKET and upper(i) <= seconds:
        i += 1
    return min(i, MAX_BUCKET)


def midpoint(i: int) -> float:
    return (lower(i) + upper(i)) / 2


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (nearest rank: the ``ceil(q * n)``-th smallest sample) as its bucket's midpoint;
    None without samples."""
    total = sum(c for c in counts.values() if c > 0)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total - 1e-9))
    seen = 0
    for i in sorted(counts):
        if counts[i] <= 0:
            continue
        seen += counts[i]
        if seen >= rank:
            return midpoint(i)
    return midpoint(max(counts))  # pragma: no cover - rank <= total


def quantiles(counts: Mapping[int, int], qs: Sequence[float]) -> list[float | None]:
    """Several quantiles of one histogram in one pass (``qs`` ascending); the same values as ``quantile``."""
    total = sum(counts.values())
    if total <= 0:
        return [None] * len(qs)
    ranks = [max(1, math.ceil(q * total - 1e-9)) for q in qs]
    out: list[float | None] = []
    seen = 0
    for i in sorted(counts):
        seen += counts[i]
        while len(out) < len(ranks) and seen >= ranks[len(out)]:
            out.append(midpoint(i))
        if len(out) == len(ranks):
            break
    return out


def exact_quantile(samples: Iterable[float], q: float) -> float | None:
    """The nearest-rank quantile of raw samples (what ``quantile`` approximates)."""
    values = sorted(samples)
    if not values:
        return None
    return values[max(1, math.ceil(q * len(values) - 1e-9)) - 1]


def within_bound(estimate: float, exact: float) -> bool:
    return abs(estimate - exact) <= max(ABSOLUTE_BOUND, RELATIVE_BOUND * exact) + 1e-9
