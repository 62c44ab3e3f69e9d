"""The convergence map: at what guest dirty rate does a live migration stop converging, per policy.

One guest runs vp-memcheck over a working set of ``W`` MiB; for each migration mode and each dirty
rate of the sweep the workload is restarted at that rate (0: idle, nothing rewritten; not
vp-memcheck's flat out) and the guest is moved once to another
node (and verified, as every move is). Each move records ``convergence.*`` samples labelled
``mode`` and ``dirty_mibps`` (the rate asked for): total time, platform and guest-observed
downtime, MiB transferred, the dirty rate the guest achieved, and ``convergence.converged``
(1 when the move completed within the policy's timeout, 0 when it had to be cancelled).

**The prediction** (``simulate_precopy``): pre-copy sends the guest's RAM once (``R0`` MiB, read
from the sweep's own rate-0 move), then over and over the pages dirtied while it sent the
previous round, ``min(W, rate x round time)``; it stops the guest when what is left fits in the
downtime limit at the bandwidth (``bandwidth x downtime_limit``). Each round is ``rate /
bandwidth`` times the last, so pre-copy converges while the dirty rate stays under the bandwidth
(unless the whole working set fits in the downtime limit), and it must do so before the timeout:
the boundary is the highest rate for which the simulated rounds end in time. The bandwidth is
the one available: the policy's cap, or what the rate-0 move achieved if that was less.
Auto-converge (qemu throttles the vCPU when the dirty rate passes half the bandwidth) and
post-copy (switch after the first pass) are expected to converge at every rate; the map shows
at what cost in time and downtime.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from virtproof.instruments.prober import ProbeLog
from virtproof.lab.platform import GuestAccess, MigratablePlatform, MigrationPolicy, MigrationResult, PlatformError
from virtproof.scenarios.migration import MemcheckWorkload, MigrationSuite
from virtproof.suites.engines.integrity import Cause, start_memcheck, verify_memcheck
from virtproof.suites.engines.migration import (
    GuestUnderTest,
    check_same_guest,
    guest_ssh,
    record_integrity,
    settle_probers,
    start_probers,
    stop_probers,
)
from virtproof.suites.factory import Recorder

PAGE_MIB = 4096 / (1024 * 1024)
QEMU_DEFAULT_DOWNTIME_MS = 300  # what the sweep assumes when the policy sets no downtime limit
MAX_ROUNDS = 10_000


@dataclass(frozen=True)
class Simulated:
    converges: bool
    total_s: float  # until the guest stops for the last round (or the timeout)
    transferred_mib: float
    rounds: int


def simulate_precopy(rate_mibps: float, bandwidth_mibps: float, downtime_ms: float, working_set_mib: float,
                     first_pass_mib: float, timeout_s: float) -> Simulated:  # fmt: skip
    """Pre-copy rounds at a constant dirty rate over a bounded working set (see the module doc)."""
    threshold = bandwidth_mibps * downtime_ms / 1000
    elapsed = first_pass_mib / bandwidth_mibps
    sent, pending, rounds = first_pass_mib, min(working_set_mib, rate_mibps * elapsed), 1
    while pending > threshold:
        if elapsed > timeout_s or rounds >= MAX_ROUNDS:
            return Simulated(False, timeout_s, sent, rounds)
        duration = pending / bandwidth_mibps
        elapsed += duration
        sent += pending
        pending = min(working_set_mib, rate_mibps * duration)
        rounds += 1
    elapsed += pending / bandwidth_mibps  # the stop-and-copy
    return Simulated(elapsed <= timeout_s, min(elapsed, timeout_s), sent + pending, rounds)


def predicted_boundary(bandwidth_mibps: float, downtime_ms: float, working_set_mib: float, first_pass_mib: float,
                       timeout_s: float) -> float:  # fmt: skip
    """The highest dirty rate at which simulated pre-copy converges in time (inf: any rate)."""
    if simulate_precopy(1e9, bandwidth_mibps, downtime_ms, working_set_mib, first_pass_mib, timeout_s).converges:
        return math.inf  # the whole working set fits in the downtime limit
    low, high = 0.0, bandwidth_mibps * 4
    if not simulate_precopy(low, bandwidth_mibps, downtime_ms, working_set_mib, first_pass_mib, timeout_s).converges:
        return 0.0  # not even an idle guest moves in time
    for _ in range(60):
        mid = (low + high) / 2
        ok = simulate_precopy(mid, bandwidth_mibps, downtime_ms, working_set_mib, first_pass_mib, timeout_s).converges
        low, high = (mid, high) if ok else (low, mid)
    return low


def measured_boundary(points: Sequence[tuple[float, bool]]) -> tuple[float | None, float | None]:
    """(highest rate that converged below the first that did not, lowest rate that did not)."""
    ordered = sorted(points)
    failed = next((rate for rate, ok in ordered if not ok), None)
    below = [rate for rate, ok in ordered if ok and (failed is None or rate < failed)]
    return (max(below) if below else None), failed


@dataclass(frozen=True)
class SweepPoint:
    mode: str
    rate_mibps: float
    result: MigrationResult
    achieved_mibps: float | None


def _other(nodes: Sequence[str], node: str) -> str:
    return next(n for n in nodes if n != node)


def run_sweep(
    platform: MigratablePlatform, suite: MigrationSuite, guest: GuestUnderTest, access: GuestAccess,
    record: Recorder, out: Path, cause: Cause,
) -> tuple[list[SweepPoint], list[str]]:  # fmt: skip
    """Move ``guest`` once per (mode, rate) of ``suite.sweep``; (the points, problems found)."""
    assert suite.sweep is not None and suite.memcheck is not None and suite.policy.bandwidth_mibps is not None
    sweep, memcheck, base = suite.sweep, suite.memcheck, suite.policy.policy()
    bandwidth = float(suite.policy.bandwidth_mibps)
    downtime = float(base.downtime_limit_ms or QEMU_DEFAULT_DOWNTIME_MS)
    nodes = list(platform.nodes())
    points: list[SweepPoint] = []
    leg = 0
    for mode in sweep.modes:
        policy = replace(base, mode=mode)
        for rate in sweep.rates(bandwidth):
            point, problems = _one_move(platform, suite, memcheck, guest, access, record, out, policy, rate,
                                        _other(nodes, guest.vm.node), leg, bandwidth, downtime, cause)  # fmt: skip
            leg += 1
            if point is not None:
                points.append(point)
            if problems:
                return points, problems
    _record_boundaries(record, points, memcheck, bandwidth, downtime, base.timeout_s)
    return points, []


def _one_move(
    platform: MigratablePlatform, suite: MigrationSuite, memcheck: MemcheckWorkload, guest: GuestUnderTest,
    access: GuestAccess, record: Recorder, out: Path, policy: MigrationPolicy, rate: float, target: str, leg: int,
    bandwidth: float, downtime: float, cause: Cause,
) -> tuple[SweepPoint | None, list[str]]:  # fmt: skip
    def run(command: str) -> str:
        return guest_ssh(guest.vm, access, command)

    guest.workload_pid = start_memcheck(run, memcheck, rate, idle=rate == 0)  # the map's 0 is an idle guest
    before = verify_memcheck(run)
    guest.report = before
    start_probers([guest], suite, out, leg)
    try:
        try:
            result = platform.migrate(guest.vm, target, policy)
        except PlatformError as exc:
            now = time.time()
            result = MigrationResult(guest.vm.name, guest.vm.node, target, False, policy.mode, now, now, 0.0,
                                     error=str(exc))  # fmt: skip
        settle_probers([(guest.probers.values(), result)])  # every path answered again, or the bound passed
    finally:
        stop_probers([guest])
    labels = {"vm": guest.vm.name, "mode": policy.mode, "dirty_mibps": f"{rate:g}", "bandwidth_mibps": f"{bandwidth:g}",
              "downtime_limit_ms": f"{downtime:g}", "source": result.source, "target": result.target,
              "leg": str(leg), "time_source": result.time_source}  # fmt: skip
    converged = result.ok
    lost = not result.ok and "lost" in (result.error or "")
    record("convergence.converged", 1.0 if converged else 0.0, "bool", error=(result.error or "")[:160], **labels)
    record("convergence.total_s", result.total_s, "s", **labels)
    if result.transferred_mib is not None:
        record("convergence.transferred_mib", result.transferred_mib, "MiB", **labels)
    if result.downtime_ms is not None:
        record("convergence.downtime_ms", result.downtime_ms, "ms", **labels)
    if converged:
        window_start, window_end = result.observed_window
        for path, prober in guest.probers.items():
            gap = ProbeLog.read(prober.out).longest_gap(window_start, window_end)
            if gap is not None:
                record("convergence.guest_downtime_ms", gap.ms, "ms", path=path, **labels)
    problems: list[str] = []
    if lost:  # a move that did not converge is a point of the map; a lost guest ends the sweep
        problems.append(f"{result.vm} {result.source}->{result.target} ({policy.mode}, {rate:g} MiB/s): {result.error}")
    problems += check_same_guest(guest, access, cause)
    record_integrity(record, guest, {**labels, "pattern": "sweep"}, cause)
    achieved = None
    after = guest.report
    if after is not None and after.time > before.time and after.seq > before.seq:
        achieved = (after.pages_written - before.pages_written) * PAGE_MIB / (after.time - before.time)
        record("convergence.achieved_dirty_mibps", achieved, "MiB/s", **labels)
    return SweepPoint(policy.mode, rate, result, achieved), problems


def _record_boundaries(record: Recorder, points: Sequence[SweepPoint], memcheck: MemcheckWorkload,
                       bandwidth: float, downtime: float, timeout_s: float) -> None:  # fmt: skip
    """The predicted and the measured pre-copy boundary, as samples the report's chart draws."""
    precopy = [p for p in points if p.mode == "precopy"]
    idle = [p for p in precopy if p.rate_mibps == 0 and p.result.ok and p.result.transferred_mib]
    first_pass = idle[0].result.transferred_mib if idle else None
    available = bandwidth
    if idle and idle[0].result.total_s > 0 and first_pass:
        available = min(bandwidth, first_pass / max(idle[0].result.total_s - (idle[0].result.setup_s or 0), 1e-3))
    if first_pass is None:
        first_pass = float(memcheck.mib) * 2  # no idle move to read it from: a guess, labelled as such
    labels = {"bandwidth_mibps": f"{bandwidth:g}", "available_mibps": f"{available:.1f}",
              "downtime_limit_ms": f"{downtime:g}", "working_set_mib": str(memcheck.mib),
              "first_pass_mib": f"{first_pass:.1f}", "timeout_s": f"{timeout_s:g}",
              "first_pass_source": "measured" if idle else "guessed"}  # fmt: skip
    for rate in sorted({p.rate_mibps for p in points}):
        model = simulate_precopy(rate, available, downtime, memcheck.mib, first_pass, timeout_s)
        record("convergence.predicted_total_s", model.total_s, "s", mode="precopy", dirty_mibps=f"{rate:g}",
               converges=str(model.converges), rounds=str(model.rounds), **labels)  # fmt: skip
    boundary = predicted_boundary(available, downtime, memcheck.mib, first_pass, timeout_s)
    if math.isfinite(boundary):  # infinite when the whole working set fits in the downtime limit
        record("convergence.predicted_boundary_mibps", boundary, "MiB/s", **labels)
    record("convergence.available_bandwidth_mibps", available, "MiB/s", **labels)
    for mode in sorted({p.mode for p in points}):
        rates = [(p.rate_mibps, p.result.ok) for p in points if p.mode == mode]
        ok_below, failed = measured_boundary(rates)
        if failed is not None:  # the boundary lies between the last rate that converged and this one
            record("convergence.measured_boundary_mibps", failed, "MiB/s", mode=mode, bound="at_or_below",
                   last_converged=f"{ok_below:g}" if ok_below is not None else "none", **labels)  # fmt: skip
        else:  # every rate converged: the boundary is above the highest one tried
            record("convergence.measured_boundary_mibps", max(r for r, _ in rates), "MiB/s", mode=mode,
                   bound="above", last_converged=f"{max(r for r, _ in rates):g}", **labels)  # fmt: skip
