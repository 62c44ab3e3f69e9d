"""What one density step measured, and the stop decision the scenario's ``stop_when`` makes from it.

Pure functions over plain values, so the decision is testable on synthetic steps: a step's
time-to-SSH statistics cover its own guests, a guest that never answered counts as infinitely
slow, and the capacity is the guest count after the last step that met every condition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from virtproof.core import density_metrics as dm
from virtproof.instruments.quantiles import linear
from virtproof.scenarios.density import StopCondition

# Reasons a ramp stops without a condition breaking.
MAX_VMS = "max_vms"
HOST_MEMORY = "host_memory"


@dataclass(frozen=True)
class StepStats:
    """One step of a ramp, as the stop conditions see it."""

    step: int  # 1-based
    target_vms: int
    vms_running: int
    boot_times_s: tuple[float, ...]  # time to SSH of the step's guests that answered
    failed_boots: int
    lost_vms: int
    host_memory_fraction: float
    host_cpu_fraction: float  # host busy fraction while the step booted
    idle_host_cpu_fraction: float  # host busy fraction in the settle window after it
    harness_cpu_fraction: float  # the harness's own CPU over the step, of all cores
    oom_kills: int = 0  # processes the kernel's OOM killer killed during the step
    out_of_memory: bool = False  # a create failed for lack of host memory

    @property
    def all_times_s(self) -> tuple[float, ...]:
        return self.boot_times_s + (math.inf,) * self.failed_boots

    def values(self) -> dict[str, float]:
        """Every step metric (``virtproof.core.density_metrics.STEP_METRICS``) and its value in this step."""
        times = self.all_times_s
        return {
            dm.STEP_P50_TIME_TO_SSH_S: linear(times, 50),
            dm.STEP_P95_TIME_TO_SSH_S: linear(times, 95),
            dm.STEP_MAX_TIME_TO_SSH_S: max(times) if times else math.nan,
            dm.STEP_FAILED_BOOTS: float(self.failed_boots),
            dm.STEP_LOST_VMS: float(self.lost_vms),
            dm.STEP_HOST_MEMORY_FRACTION: self.host_memory_fraction,
            dm.STEP_HOST_CPU_FRACTION: self.host_cpu_fraction,
            dm.STEP_IDLE_HOST_CPU_FRACTION: self.idle_host_cpu_fraction,
            dm.STEP_HARNESS_CPU_FRACTION: self.harness_cpu_fraction,
        }

    def value(self, metric: str) -> float:
        """The value ``metric`` (a ``virtproof.core.density_metrics.StepMetric``) had in this step."""
        try:
            return self.values()[metric]
        except KeyError:
            raise KeyError(f"unknown step metric {metric!r}") from None


def broken(conditions: Sequence[StopCondition], stats: StepStats) -> list[StopCondition]:
    """The conditions this step does not meet, in the scenario's order.

    A step that booted no guest has no time-to-SSH: conditions on it are not judged (they are
    neither met nor broken), everything else is.
    """
    out = []
    for condition in conditions:
        value = stats.value(condition.metric)
        if math.isnan(value) and condition.metric.endswith("time_to_ssh_s"):
            continue
        if not condition.met_by(value):
            out.append(condition)
    return out


@dataclass(frozen=True)
class StopDecision:
    stop: bool
    reason: str  # "" while the ramp goes on
    detail: str


def decide(conditions: Sequence[StopCondition], stats: StepStats, max_vms: int) -> StopDecision:
    """Whether the ramp stops after ``stats``, and why. Running out of host memory wins over all."""
    if stats.out_of_memory or stats.oom_kills:
        what = f"{stats.oom_kills} OOM kill(s)" if stats.oom_kills else "a create failed for lack of memory"
        return StopDecision(True, HOST_MEMORY, f"step {stats.step}: {what}")
    failing = broken(conditions, stats)
    if failing:
        first = failing[0]
        parts = [f"{c.describe()} broken ({stats.value(c.metric):.3g})" for c in failing]
        return StopDecision(True, first.reason, f"step {stats.step}: " + "; ".join(parts))
    if stats.target_vms >= max_vms:
        return StopDecision(True, MAX_VMS, f"step {stats.step}: reached max_vms {max_vms}")
    return StopDecision(False, "", "")


def capacity(conditions: Sequence[StopCondition], steps: Sequence[StepStats]) -> int:
    """Guests running after the last step (before the first broken one) that met every condition."""
    best = 0
    for stats in steps:
        if stats.out_of_memory or stats.oom_kills or broken(conditions, stats):
            break
        best = stats.vms_running
    return best


def projected_memory_fraction(used_kib: int, total_kib: int, new_vms: int, per_vm_mib: float) -> float:
    """Host memory fraction after starting ``new_vms`` more guests of ``per_vm_mib`` each."""
    return (used_kib + new_vms * per_vm_mib * 1024) / total_kib if total_kib else 1.0
