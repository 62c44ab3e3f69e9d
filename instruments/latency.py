"""kube-burner compatible latency summaries (vmiLatency quantile documents), by kube-burner's method.

Phase names are kube-burner's ``quantileName`` values (pkg/measurements/vmi_latency.go): each
latency is whole milliseconds (Go's ``Duration.Milliseconds``, which truncates) from the
VirtualMachine's creationTimestamp (the VMI's, for a bare VMI). A summary has kube-burner's
``P50 P95 P99 min max avg``, each an ``int`` as in ``metrics.NewLatencySummary``: the
percentiles of ``instruments.quantiles.kube_burner`` and the mean, truncated toward zero.
VMIs that never reached Running are left out, as kube-burner's ``normalizeMetrics`` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from virtproof.instruments.quantiles import kube_burner

# VMI phase -> kube-burner quantileName
PHASE_NAMES = {
    "Pending": "VMIPending",
    "Scheduling": "VMIScheduling",
    "Scheduled": "VMIScheduled",
    "Running": "VMIRunning",
}
# kube-burner's vmiLatency quantile names, in the order a VM goes through them.
ORDER = (
    "VMICreated", "VMIPending", "VMIScheduling", "VMIScheduled", "PodCreated", "PodScheduled",
    "PodInitialized", "PodReadyToStartContainers", "PodContainersReady", "VMIRunning", "VMReady",
)  # fmt: skip
REQUIRED = "VMIRunning"  # a VM without it is not summarised


@dataclass(frozen=True)
class Quantiles:
    quantile_name: str
    count: int
    p50: int
    p95: int
    p99: int
    min: int
    max: int
    avg: int

    def as_kube_burner(self) -> dict[str, float | str | int]:
        return {"quantileName": self.quantile_name, "P50": self.p50, "P95": self.p95, "P99": self.p99,
                "min": self.min, "max": self.max, "avg": self.avg, "metricName": "vmiLatencyQuantilesMeasurement"}


def _go_int(value: float) -> int:
    """Go's ``int(float64)``: truncation toward zero (NaN has no int; kube-burner never passes one here)."""
    return 0 if math.isnan(value) else math.trunc(value)


def summarize(name: str, values_ms: Sequence[float]) -> Quantiles:
    values = [float(math.trunc(v)) for v in values_ms]  # Duration.Milliseconds()
    if not values:
        return Quantiles(name, 0, 0, 0, 0, 0, 0, 0)
    return Quantiles(
        name, len(values), _go_int(kube_burner(values, 50)), _go_int(kube_burner(values, 95)),
        _go_int(kube_burner(values, 99)), _go_int(min(values)), _go_int(max(values)),
        _go_int(sum(values) / len(values)),
    )  # fmt: skip


def summarize_all(per_vm: Iterable[Mapping[str, float]]) -> list[Quantiles]:
    """``per_vm``: each VM's {quantileName: ms}; one summary per phase seen, in ``ORDER``; VMs that
    never reached Running are dropped first."""
    buckets: dict[str, list[float]] = {}
    for phases in per_vm:
        if REQUIRED not in phases:
            continue
        for name, value in phases.items():
            buckets.setdefault(name, []).append(value)
    return [summarize(name, buckets[name]) for name in ORDER if name in buckets]
