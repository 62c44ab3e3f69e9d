"""kube-burner compatible latency summaries (vmiLatency quantile documents).

Phase names are kube-burner's ``quantileName`` values; each latency is milliseconds from the
VirtualMachine's creationTimestamp (the VMI's, for a bare VMI), and each summary has P50, P95,
P99, max and avg like kube-burner's ``vmiLatencyQuantilesMeasurement`` documents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# VMI phase -> kube-burner quantileName
PHASE_NAMES = {
    "Pending": "VMIPending",
    "Scheduling": "VMIScheduling",
    "Scheduled": "VMIScheduled",
    "Running": "VMIRunning",
}
ORDER = ("VMICreated", "VMIPending", "VMIScheduling", "VMIScheduled", "VMIRunning", "VMIReady", "VMReady")


@dataclass(frozen=True)
class Quantiles:
    quantile_name: str
    count: int
    p50: float
    p95: float
    p99: float
    max: float
    avg: float

    def as_kube_burner(self) -> dict[str, float | str | int]:
        return {"quantileName": self.quantile_name, "P50": self.p50, "P95": self.p95, "P99": self.p99,
                "max": self.max, "avg": self.avg, "metricName": "vmiLatencyQuantilesMeasurement"}


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (what kube-burner's metrics package uses)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(name: str, values_ms: Iterable[float]) -> Quantiles:
    values = sorted(values_ms)
    if not values:
        return Quantiles(name, 0, math.nan, math.nan, math.nan, math.nan, math.nan)
    return Quantiles(name, len(values), _quantile(values, 50), _quantile(values, 95),
                     _quantile(values, 99), values[-1], round(sum(values) / len(values), 3))


def summarize_all(per_vm: Iterable[Mapping[str, float]]) -> list[Quantiles]:
    """``per_vm``: each VM's {quantileName: ms}; returns one summary per phase seen, in order."""
    buckets: dict[str, list[float]] = {}
    for phases in per_vm:
        for name, value in phases.items():
            buckets.setdefault(name, []).append(value)
    return [summarize(name, buckets[name]) for name in ORDER if name in buckets]
