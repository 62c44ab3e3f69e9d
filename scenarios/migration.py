"""The ``virtproof.suites.migration`` section: which guests move how, under what load and policy.

```yaml
suites:
  migration:
    count: 2            # guests
    concurrency: 2      # k for pattern: parallel (moves at once)
    round_trips: 1      # each guest goes to another node and back this many times (0: none)
    pattern: sequential # sequential | parallel | evacuate | round_robin
    workload: {kind: memcheck, mib: 32, rate_mibps: 4}   # idle | dirty | memcheck | http, or a list
    policy: {mode: precopy, bandwidth_mibps: 64, downtime_limit_ms: 300, timeout_s: 120}
    probe: http         # the prober: GET /name at 100 Hz (or tcp: a bare connect, cheaper for the guest)
    faults: true        # also run the fault tests (link down, destination/source killed)
    sweep: {steps: 8, max_ratio: 2.0, modes: [precopy, auto_converge, postcopy]}   # the convergence map
    inject_corruption: {leg: 0, page: 100, how: stale}   # the integrity check's self-test
```

``workload`` is one workload or a list of them, at most one per kind and one memory workload
(``dirty`` or ``memcheck``): ``[{kind: http, users: 4, rate: 20}, {kind: memcheck, mib: 32}]``
serves HTTP load and proves the guest's memory intact after every move.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidatorFunctionWrapHandler, field_validator, model_validator

from virtproof.core.migration import MigrationMode, MigrationPolicy, policy_label
from virtproof.scenarios.base import Strict, SuiteRunner

Pattern = Literal["sequential", "parallel", "evacuate", "round_robin"]
PATTERN_MIN_NODES = {"sequential": 2, "parallel": 2, "evacuate": 2, "round_robin": 2}
PAGE_KIB = 4
ALL_MODES: tuple[MigrationMode, ...] = ("precopy", "auto_converge", "postcopy")


class IdleWorkload(Strict):
    kind: Literal["idle"]


class DirtyWorkload(Strict):
    """``vp-dirty MIB RATE`` in the guest: rewrite ``mib`` MiB of /dev/shm at ``rate_mibps`` (0: flat out)."""

    kind: Literal["dirty"]
    mib: int = Field(48, ge=1, le=4096)
    rate_mibps: int = Field(0, ge=0, le=100_000)


class MemcheckWorkload(Strict):
    """``vp-memcheck run`` in the guest: ``mib`` MiB of /dev/shm hold a pattern derived from (page,
    generation), rewritten at ``rate_mibps`` (0: flat out) plus ``hot_pages`` rewritten 16 times a
    second at 4 MiB/s; every page is verified after every move (``migration.corrupted_pages``)."""

    kind: Literal["memcheck"]
    mib: int = Field(32, ge=1, le=65_536)
    rate_mibps: float = Field(4.0, ge=0, le=100_000)
    hot_pages: int = Field(16, ge=0, le=1 << 20)


class HttpWorkload(Strict):
    """locust against the guest's HTTP server during every move."""

    kind: Literal["http"]
    users: int = Field(4, ge=1, le=1000)
    rate: float = Field(20.0, gt=0, le=10_000, description="requests per second, all users together")


Workload = Annotated[IdleWorkload | DirtyWorkload | MemcheckWorkload | HttpWorkload, Field(discriminator="kind")]
AnyWorkload = IdleWorkload | DirtyWorkload | MemcheckWorkload | HttpWorkload
_ONE_WORKLOAD: TypeAdapter[AnyWorkload] = TypeAdapter(Workload)
_WORKLOADS: TypeAdapter[list[AnyWorkload]] = TypeAdapter(list[Workload])


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


class SweepSpec(Strict):
    """The convergence map: one guest moved once per (dirty rate, mode), its memcheck workload
    rewriting at each rate in turn: from 0 to ``max_ratio`` x the policy's bandwidth in ``steps``
    steps, or the explicit ``rates_mibps``. Each move runs under the suite's policy with its mode
    replaced; a pre-copy move that does not converge ends at the policy's ``timeout_s``."""

    modes: list[MigrationMode] = Field(default_factory=lambda: list(ALL_MODES), min_length=1)
    steps: int = Field(8, ge=2, le=64)
    max_ratio: float = Field(2.0, gt=0, le=10)
    rates_mibps: list[float] | None = Field(None, min_length=1)

    def rates(self, bandwidth_mibps: float) -> list[float]:
        if self.rates_mibps is not None:
            return list(self.rates_mibps)
        top = self.max_ratio * bandwidth_mibps
        return [round(top * i / (self.steps - 1), 2) for i in range(self.steps)]

    @field_validator("rates_mibps")
    @classmethod
    def _rates(cls, rates: list[float] | None) -> list[float] | None:
        if rates is not None and any(r < 0 for r in rates):
            raise ValueError("rates must be 0 or more MiB/s")
        return rates


class InjectCorruption(Strict):
    """The integrity check's self-test: after the moves of wave ``leg`` and before they are
    verified, damage page ``page`` of the first guest's vp-memcheck region behind the workload's
    back (``vp-memcheck corrupt -x how``). That move must then fail with ``migration.corrupted_pages``
    (label ``cause=injected``): a run that passes proves the detector blind."""

    leg: int = Field(0, ge=0)
    page: int = Field(100, ge=0)
    how: Literal["flip", "zero", "stale", "swap"] = "stale"


class MigrationSuite(SuiteRunner):
    """Boot ``count`` guests, move each to another node and back ``round_trips`` times."""

    round_trips: int = Field(1, ge=0, le=100)
    pattern: Pattern = "sequential"
    workload: Workload | tuple[Workload, ...] = Field(default_factory=lambda: IdleWorkload(kind="idle"))
    policy: PolicySpec = Field(default_factory=PolicySpec)
    probe_interval_ms: float = Field(10.0, ge=1.0, le=10.0, description="prober period: 100 Hz or faster")
    probe: Literal["http", "tcp"] = Field("http", description="GET /name, or a bare TCP connect (cheaper)")
    faults: bool = False
    fault_timeout_s: float = Field(20.0, gt=0, le=3600, description="policy timeout in the fault tests")
    fault_bandwidth_mibps: int = Field(8, ge=1, le=1024, description="slow the fault tests' moves to hit them mid-way")
    sweep: SweepSpec | None = None
    inject_corruption: InjectCorruption | None = None

    @field_validator("workload", mode="wrap")
    @classmethod
    def _one_or_a_list(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """One workload, or a list of them (a tuple here); errors point into the list."""
        del handler  # each form is validated on its own, so an error names only that form
        if isinstance(value, list | tuple):
            workloads = tuple(_WORKLOADS.validate_python(list(value)))
            kinds = [w.kind for w in workloads]
            if not workloads:
                raise ValueError("an empty list; give at least one workload (or {kind: idle})")
            if len(set(kinds)) != len(kinds):
                raise ValueError(f"lists a kind twice ({', '.join(kinds)})")
            if "dirty" in kinds and "memcheck" in kinds:
                raise ValueError("has both dirty and memcheck: one memory workload per guest")
            if "idle" in kinds and len(kinds) > 1:
                raise ValueError("idle means no workload; do not combine it with others")
            return workloads[0] if len(workloads) == 1 else workloads
        return _ONE_WORKLOAD.validate_python(value)

    @model_validator(mode="after")
    def _consistent(self) -> MigrationSuite:
        if self.pattern == "parallel" and self.concurrency < 2:
            raise ValueError("pattern parallel moves `concurrency` guests at once; set concurrency to 2 or more")
        if self.sweep is not None:
            if self.memcheck is None:
                raise ValueError("sweep needs a memcheck workload (its region is what the sweep dirties)")
            if self.policy.bandwidth_mibps is None:
                raise ValueError("sweep needs policy.bandwidth_mibps: the map is drawn against it")
        if self.inject_corruption is not None:
            memcheck = self.memcheck
            if memcheck is None:
                raise ValueError("inject_corruption needs a memcheck workload (it damages its region)")
            if self.inject_corruption.page >= memcheck.mib * 1024 // PAGE_KIB:
                raise ValueError(f"inject_corruption.page is outside the {memcheck.mib} MiB memcheck region")
        if self.round_trips == 0 and self.sweep is None and not self.faults:
            raise ValueError("round_trips: 0 with neither sweep nor faults leaves nothing to run")
        return self

    @property
    def workloads(self) -> tuple[AnyWorkload, ...]:
        return self.workload if isinstance(self.workload, tuple) else (self.workload,)

    @property
    def memcheck(self) -> MemcheckWorkload | None:
        return next((w for w in self.workloads if isinstance(w, MemcheckWorkload)), None)

    @property
    def dirty(self) -> DirtyWorkload | None:
        return next((w for w in self.workloads if isinstance(w, DirtyWorkload)), None)

    @property
    def http(self) -> HttpWorkload | None:
        return next((w for w in self.workloads if isinstance(w, HttpWorkload)), None)

    def legs(self, nodes: int) -> int:
        """Waves of moves in the round trips: two per trip (there and back); round_robin one per node."""
        return self.round_trips * (nodes if self.pattern == "round_robin" else 2)

    @property
    def min_nodes(self) -> int:
        return PATTERN_MIN_NODES[self.pattern]

    def check(self, nodes: int | None, memory_mib: int | None, why: str = "") -> None:
        """ValueError if a lab of ``nodes`` nodes VMs can run on (None: unknown; ``why``: how the
        scenario gives that many) or the guest size cannot run this."""
        if nodes is not None and nodes < self.min_nodes:
            raise ValueError(
                f"migration: pattern {self.pattern} needs at least {self.min_nodes} nodes; the lab has {nodes}"
                + (f" schedulable node{'' if nodes == 1 else 's'} ({why})" if why else "")
            )
        inject = self.inject_corruption
        if nodes is not None and inject is not None and inject.leg >= self.legs(nodes):
            raise ValueError(f"migration.inject_corruption.leg {inject.leg}: the round trips have "
                             f"{self.legs(nodes)} wave(s) of moves on {nodes} nodes")
        memory = self.dirty or self.memcheck
        if memory_mib is not None and memory is not None:
            room = memory_mib // 2 - 8  # the guest's /dev/shm is half its memory
            if memory.mib > room:
                raise ValueError(
                    f"migration.workload.mib {memory.mib} does not fit the guest's /dev/shm "
                    f"(half of {memory_mib} MiB; at most {room})"
                )


def workload_label(workload: AnyWorkload | tuple[AnyWorkload, ...]) -> str:
    """``idle``, ``dirty-48mib``, ``memcheck-32mib-4mibps``, ``http-2u-10rps+memcheck-32mib-4mibps``..."""
    if isinstance(workload, tuple):
        return "+".join(workload_label(w) for w in workload)
    if isinstance(workload, DirtyWorkload):
        return f"dirty-{workload.mib}mib" + (f"-{workload.rate_mibps}mibps" if workload.rate_mibps else "")
    if isinstance(workload, MemcheckWorkload):
        return f"memcheck-{workload.mib}mib-" + (f"{workload.rate_mibps:g}mibps" if workload.rate_mibps else "flat")
    if isinstance(workload, HttpWorkload):
        return f"http-{workload.users}u-{workload.rate:g}rps"
    return "idle"
