"""The ``virtproof.suites.migration`` section: which guests move how, under what load and policy.

```yaml
suites:
  migration:
    count: 2            # guests
    concurrency: 2      # k for pattern: parallel (moves at once)
    round_trips: 1      # each guest goes to another node and back this many times
    pattern: sequential # sequential | parallel | evacuate | round_robin
    workload: {kind: dirty, mib: 48, rate_mibps: 0}   # idle | dirty | http
    policy: {mode: precopy, bandwidth_mibps: 64, downtime_limit_ms: 300, timeout_s: 120}
    probe: http         # the prober: GET /name at 100 Hz (or tcp: a bare connect, cheaper for the guest)
    faults: true        # also run the fault tests (link down, destination/source killed)
```
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from virtproof.core.migration import MigrationPolicy, policy_label
from virtproof.scenarios.base import Strict, SuiteRunner

Pattern = Literal["sequential", "parallel", "evacuate", "round_robin"]
PATTERN_MIN_NODES = {"sequential": 2, "parallel": 2, "evacuate": 2, "round_robin": 2}


class IdleWorkload(Strict):
    kind: Literal["idle"]


class DirtyWorkload(Strict):
    """``vp-dirty MIB RATE`` in the guest: rewrite ``mib`` MiB of /dev/shm at ``rate_mibps`` (0: flat out)."""

    kind: Literal["dirty"]
    mib: int = Field(48, ge=1, le=4096)
    rate_mibps: int = Field(0, ge=0, le=100_000)


class HttpWorkload(Strict):
    """locust against the guest's HTTP server during every move."""

    kind: Literal["http"]
    users: int = Field(4, ge=1, le=1000)
    rate: float = Field(20.0, gt=0, le=10_000, description="requests per second, all users together")


Workload = Annotated[IdleWorkload | DirtyWorkload | HttpWorkload, Field(discriminator="kind")]


class PolicySpec(Strict):
    mode: Literal["precopy", "auto_converge", "postcopy"] = "precopy"
    bandwidth_mibps: int | None = Field(None, ge=1, le=100_000)
    downtime_limit_ms: int | None = Field(None, ge=1, le=600_000)
    timeout_s: float = Field(120.0, gt=0, le=86_400)

    def policy(self) -> MigrationPolicy:
        return MigrationPolicy(self.mode, self.bandwidth_mibps, self.downtime_limit_ms, self.timeout_s)

    @property
    def label(self) -> str:
        return policy_label(self.policy())


class MigrationSuite(SuiteRunner):
    """Boot ``count`` guests, move each to another node and back ``round_trips`` times."""

    round_trips: int = Field(1, ge=1, le=100)
    pattern: Pattern = "sequential"
    workload: Workload = Field(default_factory=lambda: IdleWorkload(kind="idle"))
    policy: PolicySpec = Field(default_factory=PolicySpec)
    probe_interval_ms: float = Field(10.0, ge=1.0, le=10.0, description="prober period: 100 Hz or faster")
    probe: Literal["http", "tcp"] = Field("http", description="GET /name, or a bare TCP connect (cheaper)")
    faults: bool = False
    fault_timeout_s: float = Field(20.0, gt=0, le=3600, description="policy timeout in the fault tests")
    fault_bandwidth_mibps: int = Field(8, ge=1, le=1024, description="slow the fault tests' moves to hit them mid-way")

    @model_validator(mode="after")
    def _parallel_needs_k(self) -> MigrationSuite:
        if self.pattern == "parallel" and self.concurrency < 2:
            raise ValueError("pattern parallel moves `concurrency` guests at once; set concurrency to 2 or more")
        return self

    @property
    def min_nodes(self) -> int:
        return PATTERN_MIN_NODES[self.pattern]

    def check(self, nodes: int | None, memory_mib: int | None) -> None:
        """ValueError if a lab of ``nodes`` nodes (None: unknown) or the guest size cannot run this."""
        if nodes is not None and nodes < self.min_nodes:
            raise ValueError(
                f"migration: pattern {self.pattern} needs at least {self.min_nodes} nodes; the lab has {nodes}"
            )
        if memory_mib is not None and isinstance(self.workload, DirtyWorkload):
            room = memory_mib // 2 - 8  # the guest's /dev/shm is half its memory
            if self.workload.mib > room:
                raise ValueError(
                    f"migration.workload.mib {self.workload.mib} does not fit the guest's /dev/shm "
                    f"(half of {memory_mib} MiB; at most {room})"
                )


def workload_label(workload: IdleWorkload | DirtyWorkload | HttpWorkload) -> str:
    if isinstance(workload, DirtyWorkload):
        return f"dirty-{workload.mib}mib" + (f"-{workload.rate_mibps}mibps" if workload.rate_mibps else "")
    if isinstance(workload, HttpWorkload):
        return f"http-{workload.users}u-{workload.rate:g}rps"
    return "idle"
