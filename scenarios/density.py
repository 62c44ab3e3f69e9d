"""The density suite's scenario section: ramp guests onto one node until a stop condition holds.

```yaml
suites:
  density:
    step: 10              # guests added per step
    max_vms: 60           # never more than this many at once
    mode: storm           # storm: a step's guests all at once; rate: ``qps`` creates per second
    memory: 96Mi          # guest memory for the ramp (overrides guest.memory)
    timeout_s: 120        # a guest without an SSH banner after this long failed to boot
    stop_when:            # stop after the first step where any of these limits is broken
      - {metric: p95_time_to_ssh_s, max: 30}
      - {metric: lost_vms, max: 0}
      - {metric: host_memory_fraction, max: 0.9}
```

Every ``stop_when`` entry has the same shape: a step ``metric`` (one of ``STEP_METRICS``) and
a ``max`` and/or ``min`` bound. A step *meets* a condition when its value is within the bounds;
the ramp stops after the first step that breaks one, and the capacity is the number of guests
running after the last step that met every condition. ``count`` (from ``SuiteRunner``) is the
number of ramps run one after another; ``concurrency`` must stay 1 (one ramp owns the node).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from virtproof.core import density_metrics as dm
from virtproof.core.density_metrics import STEP_METRICS as STEP_METRICS  # what stop_when may name
from virtproof.core.density_metrics import StepMetric as StepMetric
from virtproof.scenarios.base import Strict, SuiteRunner, parse_mib

# The ``density.stop_reason`` a broken condition reports.
STOP_REASONS: dict[str, str] = {
    dm.STEP_P50_TIME_TO_SSH_S: "time_to_ssh",
    dm.STEP_P95_TIME_TO_SSH_S: "time_to_ssh",
    dm.STEP_MAX_TIME_TO_SSH_S: "time_to_ssh",
    dm.STEP_FAILED_BOOTS: "failed_boots",
    dm.STEP_LOST_VMS: "lost_vms",
    dm.STEP_HOST_MEMORY_FRACTION: "host_memory",
    dm.STEP_HOST_CPU_FRACTION: "host_cpu",
    dm.STEP_IDLE_HOST_CPU_FRACTION: "host_cpu",
    dm.STEP_HARNESS_CPU_FRACTION: "harness_cpu",
}


class StopCondition(Strict):
    """A limit every step must meet: ``metric`` within ``[min, max]``; breaking it ends the ramp."""

    metric: StepMetric
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _has_bound(self) -> StopCondition:
        if self.max is None and self.min is None:
            raise ValueError(f"{self.metric}: needs max or min")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"{self.metric}: min ({self.min}) is above max ({self.max})")
        return self

    @property
    def reason(self) -> str:
        """The stop reason recorded when this condition breaks (``host_memory``, ``time_to_ssh``...)."""
        return STOP_REASONS[self.metric]

    def describe(self) -> str:
        bounds = []
        if self.min is not None:
            bounds.append(f">= {self.min:g}")
        if self.max is not None:
            bounds.append(f"<= {self.max:g}")
        return f"{self.metric} {' and '.join(bounds)}"

    def met_by(self, value: float) -> bool:
        """True if ``value`` is within the bounds (NaN never is)."""
        if value != value:  # NaN: not measured, so not shown to be met
            return False
        if self.max is not None and value > self.max:
            return False
        return not (self.min is not None and value < self.min)


class DensitySuite(SuiteRunner):
    """Ramp guests onto one node in steps and find how many fit before the stop conditions break."""

    step: int = Field(5, ge=1, le=1_000, description="guests added per step")
    max_vms: int = Field(40, ge=1, le=10_000, description="the ramp stops here at the latest")
    mode: Literal["storm", "rate"] = "storm"
    qps: float | None = Field(None, gt=0, le=1_000, description="creates per second (mode: rate)")
    memory: int | None = Field(None, ge=80, le=1024 * 1024, description="guest MiB for the ramp")
    node: str | None = Field(None, min_length=1, description="node to fill (default: the first)")
    primer: bool = Field(True, description="boot and discard one guest before the first step")
    settle_s: float = Field(5.0, ge=0, le=600, description="idle window after a step for CPU cost")
    liveness: Literal["http", "ssh"] = Field("http", description="how earlier guests are checked")
    liveness_timeout_s: float = Field(20.0, gt=0, le=600)
    overhead_samples: int = Field(2, ge=0, le=1_000, description="guests per step asked for /proc/meminfo")
    memory_guard: float = Field(
        0.95, gt=0, le=1, description="never start a step projected to take host memory above this fraction"
    )
    stop_when: tuple[StopCondition, ...] = Field(default_factory=tuple)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> int | None:
        return None if value is None else parse_mib(value)

    @model_validator(mode="after")
    def _consistent(self) -> DensitySuite:
        if self.step > self.max_vms:
            raise ValueError(f"step ({self.step}) is more than max_vms ({self.max_vms})")
        if self.mode == "rate" and self.qps is None:
            raise ValueError("mode rate needs qps (creates per second)")
        if self.mode == "storm" and self.qps is not None:
            raise ValueError("qps only applies to mode rate")
        if self.concurrency != 1:
            raise ValueError("concurrency must be 1: one ramp owns the node at a time (count = ramps)")
        return self

    def steps(self) -> list[int]:
        """Target guest counts after each step: step, 2*step, ... up to max_vms."""
        targets = list(range(self.step, self.max_vms + 1, self.step))
        if targets[-1] != self.max_vms:
            targets.append(self.max_vms)
        return targets

    def memory_fraction_limit(self) -> float:
        """The lowest host memory fraction any condition or the guard allows."""
        limits = [self.memory_guard]
        limits += [c.max for c in self.stop_when if c.metric == "host_memory_fraction" and c.max is not None]
        return min(limits)
