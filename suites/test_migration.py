"""The live-migration suite: move running guests between nodes and measure what users feel.

The engine (``virtproof.suites.engines.migration``) boots the guests, starts their workload and
moves them by the scenario's ``pattern`` ``round_trips`` times. Per move:
``migration.total_s``, ``migration.downtime_ms`` (the platform's),
``migration.guest_downtime_ms`` (the prober's), ``migration.transferred_mib``,
``migration.setup_s``, and under HTTP load ``migration.http_failures`` and
``migration.http_p99_ms``; labels vm, source, target, pattern, policy, workload, mode. After
each move the guest must be the same guest, still working and intact: with a memcheck workload
``migration.corrupted_pages`` (0, or the bad pages with their first addresses and a ``cause``
label) and ``migration.verify_s_per_gib``; ``migration.guest_kernel_errors`` when its kernel
logged an oops, panic, stall or lockup; a move around which every HTTP request failed fails.
A drain records ``migration.drain_most_at_once`` (moves in flight together).

With ``sweep``, ``test_convergence_map`` moves one guest once per (mode, dirty rate) and records
the ``convergence.*`` samples the report draws as the convergence map (suites/engines/convergence.py).

Fault tests (``faults: true``; need the platform's ``FaultInjection``): the nodes' link goes
down mid-move, the destination is killed, the source is killed.

Only the Platform seam is used, so the suite runs unchanged on KubeVirt.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from virtproof.lab.platform import (
    Capability,
    CapabilityMissing,
    Drainable,
    FaultInjection,
    GuestAccess,
    MigratablePlatform,
    MigrationPolicy,
    MigrationProgress,
    MigrationResult,
    Platform,
    feature,
    policy_label,
)
from virtproof.scenarios.migration import MigrationSuite
from virtproof.scenarios.model import Scenario
from virtproof.suites.engines.convergence import run_sweep
from virtproof.suites.engines.integrity import defect_cause
from virtproof.suites.engines.migration import (
    GuestTrouble,
    GuestUnderTest,
    MoveContext,
    check_same_guest,
    evacuate,
    inject_corruption,
    migration_unavailable,
    most_at_once,
    plan,
    record_move,
    run_wave,
    settle_probers,
    start_guest,
    start_probers,
    stop_guest,
    stop_probers,
)
from virtproof.suites.factory import Recorder, VMFactory

pytestmark = [pytest.mark.capability("live_migration"), pytest.mark.xdist_group("migration")]

CANCEL_SLACK_S = 30.0  # cancel + cleanup after the policy timeout; a bound against hangs, not a timing


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def suite(scenario: Scenario) -> MigrationSuite:
    if scenario.suites.migration is None:
        pytest.skip("the scenario has no suites.migration section")
    return scenario.suites.migration


@pytest.fixture
def migratable(platform: Platform, suite: MigrationSuite) -> MigratablePlatform:
    needed = [Capability.LIVE_MIGRATION]
    policy = suite.policy
    if policy.mode == "postcopy":
        needed.append(Capability.POST_COPY)
    if policy.mode == "auto_converge":
        needed.append(Capability.AUTO_CONVERGE)
    if policy.bandwidth_mibps:
        needed.append(Capability.MIGRATION_BANDWIDTH_LIMIT)
    if policy.downtime_limit_ms:
        needed.append(Capability.MIGRATION_DOWNTIME_LIMIT)
    if suite.pattern == "evacuate":
        needed.append(Capability.NODE_DRAIN)
    unavailable = migration_unavailable(platform, needed)
    if unavailable is not None:
        pytest.skip(unavailable)
    try:
        migratable = feature(platform, MigratablePlatform, Capability.LIVE_MIGRATION)
    except CapabilityMissing as exc:
        pytest.skip(str(exc))
    nodes = len(platform.nodes())
    if nodes < suite.min_nodes:
        pytest.skip(f"pattern {suite.pattern} needs {suite.min_nodes} nodes; platform {platform.name} has {nodes}")
    return migratable


@pytest.fixture
def out_dir(run_dir: Path, request: pytest.FixtureRequest) -> Path:
    directory: Path = run_dir / "migration" / str(request.node.name)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# --- the suite ----------------------------------------------------------------------------


def _start_all(
    factory: VMFactory, access: GuestAccess, suite: MigrationSuite, nodes: list[str], out: Path
) -> list[GuestUnderTest]:
    """Boot the suite's guests, ``concurrency`` at once; on a failure stop those that started."""
    home = nodes[0]
    with ThreadPoolExecutor(suite.concurrency) as pool:
        starts = [
            pool.submit(start_guest, factory, access, suite, nodes[i % len(nodes)] if suite.pattern == "round_robin"
                        else home, out)
            for i in range(suite.count)
        ]
    started = [f.result() for f in starts if f.exception() is None]
    failed = [f.exception() for f in starts if f.exception() is not None]
    if failed:
        for guest in started:
            stop_guest(guest)
        raise failed[0]  # type: ignore[misc]
    return started


def test_migration_round_trips(
    migratable: MigratablePlatform, suite: MigrationSuite, vm_factory: VMFactory, guest_access: GuestAccess,
    record: Recorder, out_dir: Path,
) -> None:  # fmt: skip
    if suite.round_trips == 0:
        pytest.skip("round_trips: 0 in the scenario")
    nodes = list(migratable.nodes())
    home = nodes[0]
    policy = suite.policy.policy()
    label = policy_label(policy)
    drainable = feature(migratable, Drainable, Capability.NODE_DRAIN) if suite.pattern == "evacuate" else None
    context = MoveContext(defect_cause(migratable.facts()))
    guests = _start_all(vm_factory, guest_access, suite, nodes, out_dir)
    problems: list[str] = []
    try:
        for leg, (kind, moves, parallel) in enumerate(plan(suite, nodes, guests, home)):
            start_probers(guests, suite, out_dir, leg)
            try:
                if kind.startswith("drain:"):
                    assert drainable is not None
                    done = evacuate(drainable, kind.split(":", 1)[1], guests, policy.timeout_s * len(guests))
                    wave_label = "drain"
                    record("migration.drain_most_at_once", most_at_once([r for _, r in done]), "moves",
                           node=kind.split(":", 1)[1], moves=str(len(done)), leg=str(leg))  # fmt: skip
                else:
                    moves = [m for m in moves if m.target != m.guest.vm.node]
                    done = run_wave(migratable, moves, policy, parallel)
                    wave_label = label
                settle_probers([(move.guest.probers.values(), result) for move, result in done])
            finally:
                stop_probers(guests)
            inject = suite.inject_corruption
            if inject is not None and inject.leg == leg:  # the detector's self-test, behind the workload's back
                inject_corruption(guests[0], guest_access, inject)
                context.injected.add(guests[0].vm.name)
            for move, result in done:
                problems += record_move(record, guest_access, suite, move.guest, result, wave_label, leg, context)
            if problems:
                break
    finally:
        for guest in guests:
            stop_guest(guest)
    assert not problems, "; ".join(problems)


# --- faults -------------------------------------------------------------------------------


@pytest.fixture
def faults(migratable: MigratablePlatform, suite: MigrationSuite) -> FaultInjection:
    if not suite.faults:
        pytest.skip("faults: false in the scenario")
    try:
        return feature(migratable, FaultInjection, Capability.FAULT_INJECTION)
    except CapabilityMissing as exc:
        pytest.skip(str(exc))


def _fault_setup(
    migratable: MigratablePlatform, suite: MigrationSuite, factory: VMFactory, access: GuestAccess, out: Path
) -> tuple[GuestUnderTest, str, str, MigrationPolicy]:
    nodes = list(migratable.nodes())
    guest = start_guest(factory, access, suite, nodes[0], out)
    policy = MigrationPolicy("precopy", suite.fault_bandwidth_mibps, None, suite.fault_timeout_s)
    return guest, nodes[0], nodes[1], policy


def _start_and_wait_active(
    migratable: MigratablePlatform, faults: FaultInjection, pool: ThreadPoolExecutor, guest: GuestUnderTest,
    target: str, policy: MigrationPolicy,
) -> tuple[Future[MigrationResult], MigrationProgress]:  # fmt: skip
    future = pool.submit(migratable.migrate, guest.vm, target, policy)
    end = time.monotonic() + 60
    while time.monotonic() < end and not future.done():
        progress = faults.migration_progress(guest.vm)
        if progress is not None and progress.status == "active" and progress.transferred_bytes > 4 * 1024 * 1024:
            return future, progress
        time.sleep(0.05)
    done = future.result() if future.done() else ""
    raise GuestTrouble(f"{guest.vm.name}: the migration never became active: {done}")


def _fault_labels(result: MigrationResult, fault: str) -> dict[str, str]:
    return {"vm": result.vm, "source": result.source, "target": result.target, "fault": fault, "mode": result.mode}


def test_fault_link_down_cancels(
    migratable: MigratablePlatform, suite: MigrationSuite, faults: FaultInjection, vm_factory: VMFactory,
    guest_access: GuestAccess, record: Recorder, out_dir: Path,
) -> None:  # fmt: skip
    guest, source, target, policy = _fault_setup(migratable, suite, vm_factory, guest_access, out_dir)
    try:
        with ThreadPoolExecutor(1) as pool:
            future, _ = _start_and_wait_active(migratable, faults, pool, guest, target, policy)
            cut = time.time()
            faults.set_node_link(target, False)
            try:
                result = future.result(timeout=policy.timeout_s + 60)
            finally:
                faults.set_node_link(target, True)
    finally:
        stop_guest(guest)
    record("migration.fault_reported_s", result.finished - cut, "s", **_fault_labels(result, "link_down"))
    assert not result.ok, f"the migration succeeded with the link down: {result}"
    assert guest.vm.node == source, f"the guest should still be on {source}, it is on {guest.vm.node}"
    assert result.finished - result.started <= policy.timeout_s + CANCEL_SLACK_S, result
    problems = check_same_guest(guest, guest_access)
    assert not problems, "; ".join(problems)


def test_fault_destination_killed(
    migratable: MigratablePlatform, suite: MigrationSuite, faults: FaultInjection, vm_factory: VMFactory,
    guest_access: GuestAccess, record: Recorder, out_dir: Path,
) -> None:  # fmt: skip
    guest, source, target, policy = _fault_setup(migratable, suite, vm_factory, guest_access, out_dir)
    try:
        with ThreadPoolExecutor(1) as pool:
            future, _ = _start_and_wait_active(migratable, faults, pool, guest, target, policy)
            killed = time.time()
            faults.kill_destination(guest.vm)
            result = future.result(timeout=policy.timeout_s + 60)
    finally:
        stop_guest(guest)
    record("migration.fault_reported_s", result.finished - killed, "s", **_fault_labels(result, "destination_killed"))
    assert not result.ok, f"the migration succeeded without its destination: {result}"
    assert guest.vm.node == source
    leftovers = faults.migration_leftovers(guest.vm)
    assert not leftovers, f"the killed destination is still there: {leftovers}"
    problems = check_same_guest(guest, guest_access)
    assert not problems, "; ".join(problems)


def test_fault_source_killed(
    migratable: MigratablePlatform, suite: MigrationSuite, faults: FaultInjection, vm_factory: VMFactory,
    guest_access: GuestAccess, record: Recorder, out_dir: Path,
) -> None:  # fmt: skip
    guest, _source, target, policy = _fault_setup(migratable, suite, vm_factory, guest_access, out_dir)
    try:
        with ThreadPoolExecutor(1) as pool:
            future, _ = _start_and_wait_active(migratable, faults, pool, guest, target, policy)
            killed = time.time()
            faults.kill_source(guest.vm)
            result = future.result(timeout=policy.timeout_s + 60)
    finally:
        stop_guest(guest)
    labels = _fault_labels(result, "source_killed")
    record("migration.failed", 1, "count", error=(result.error or "")[:200], **labels)
    record("migration.lost_guests", 1, "count", **labels)
    record("migration.fault_reported_s", result.finished - killed, "s", **labels)
    assert not result.ok and result.error and "lost" in result.error, result
    leftovers = faults.migration_leftovers(guest.vm)
    assert not leftovers, f"processes of the failed move were left running: {leftovers}"
    assert not guest.vm.alive(), "the guest's source process should be gone"
    vm_factory.delete(guest.vm)  # cleanup of a lost guest must work too


# --- the convergence map ---------------------------------------------------------------------


def test_convergence_map(
    migratable: MigratablePlatform, suite: MigrationSuite, vm_factory: VMFactory, guest_access: GuestAccess,
    record: Recorder, out_dir: Path,
) -> None:  # fmt: skip
    """One guest moved once per (mode, dirty rate) of ``sweep``: the convergence map's samples."""
    if suite.sweep is None:
        pytest.skip("no sweep in the scenario")
    for mode in suite.sweep.modes:
        needed = {"postcopy": Capability.POST_COPY, "auto_converge": Capability.AUTO_CONVERGE}.get(mode)
        if needed is not None and needed not in migratable.capabilities:
            pytest.skip(f"platform {migratable.name} lacks {needed.value} (sweep mode {mode})")
    nodes = list(migratable.nodes())
    guest = start_guest(vm_factory, guest_access, suite, nodes[0], out_dir)
    try:
        points, problems = run_sweep(migratable, suite, guest, guest_access, record, out_dir,
                                     defect_cause(migratable.facts()))  # fmt: skip
    finally:
        stop_guest(guest)
    assert not problems, "; ".join(problems)
    assert points, "the sweep moved nothing"
