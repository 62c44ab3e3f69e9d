"""kube-burner compatible latency summaries (vmiLatency quantile documents).

Phase names are kube-burner's ``quantileName`` values; each latency is milliseconds from the
VirtualMachine's creationTimestamp (the VMI's, for a bare VMI), and each summary has P50, P95,
P99, max and avg like kube-burner's ``vmiLatencyQuantilesMeasurement`` documents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from virtproof.instruments.quantiles import nearest_rank

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


def summarize(name: str, values_ms: Iterable[float]) -> Quantiles:
    values = sorted(values_ms)
    if not values:
        return Quantiles(name, 0, math.nan, math.nan, math.nan, math.nan, math.nan)
    return Quantiles(name, len(values), nearest_rank(values, 50), nearest_rank(values, 95),
                     nearest_rank(values, 99), values[-1], round(sum(values) / len(values), 3))


def summarize_all(per_vm: Iterable[Mapping[str, float]]) -> list[Quantiles]:
    """``per_vm``: each VM's {quantileName: ms}; returns one summary per phase seen, in order."""
    buckets: dict[str, list[float]] = {}
    for phases in per_vm:
        for name, value in phases.items():
            buckets.setdefault(name, []).append(value)
    return [summarize(name, buckets[name]) for name in ORDER if name in buckets]
