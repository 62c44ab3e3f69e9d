"""Quantiles, written once: nearest-rank and linear interpolation, ``q`` in percent (0..100).

- ``nearest_rank``: the smallest value with at least ``q`` % of the values at or below it
  (an observed value; what load tools report as p99).
- ``linear``: interpolation between the two neighbours of the fractional rank
  ``(n - 1) * q / 100``, numpy's default ``percentile``. Infinite values (guests that never
  answered) sort last and make every quantile that reaches into them infinite.

- ``kube_burner``: what kube-burner reports as P50/P95/P99 (github.com/montanaflynn/stats v0.7.1
  ``Percentile``, which kube-burner's ``metrics.NewLatencySummary`` calls): rank ``q/100 * n``; a
  whole rank takes that value, a fractional one the mean of the value at the truncated rank and
  the next; one value is itself.

All return NaN for no values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def nearest_rank(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def linear(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    if fraction == 0 or ordered[low] == ordered[high]:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def kube_burner(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    if len(ordered) == 1:
        return ordered[0]
    if q <= 0 or q > 100:
        return math.nan
    index = q / 100 * len(ordered)
    whole = int(index)
    if index == whole:
        return ordered[whole - 1]
    if index > 1:
        return (ordered[whole - 1] + ordered[whole]) / 2
    return math.nan
