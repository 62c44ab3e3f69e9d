"""The live-migration suite: move running guests between nodes and measure what users feel.

Guests boot on the first node (``round_robin``: spread over all nodes), run the scenario's
workload (idle, ``vp-dirty`` memory rewriting, or locust HTTP load in its own process), and
move by the scenario's ``pattern`` ``round_trips`` times. A prober process (``lab.prober``, not
in the harness's control path) sends requests at 100 Hz or more to each guest's HTTP address,
which must stay the same across moves; its longest gap without an answer is the
guest-observed downtime. Per move: ``migration.total_s``, ``migration.downtime_ms`` (the
platform's), ``migration.guest_downtime_ms`` (the prober's), ``migration.transferred_mib``,
``migration.setup_s``, and under HTTP load ``migration.http_failures`` and
``migration.http_p99_ms``; labels vm, source, target, pattern, policy, workload, mode. After
each move the guest must be the same guest: a value written before is read back over SSH,
its uptime did not reset, and its memory workload still runs.

Fault tests (``faults: true``; need the platform's fault hooks, ``platform.migrations``): the
nodes' link goes down mid-move, the destination is killed, the source is killed.

Only the Platform / MigratablePlatform protocol is used, so the suite runs unchanged on KubeVirt.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytest

from lab.guest import GuestSession
from lab.load import LoadSpec, LocustRun, window
from lab.platform import (
    VM,
    Capability,
    CapabilityMissing,
    GuestAccess,
    GuestUnreachable,
    MigratablePlatform,
    MigrationPolicy,
    MigrationResult,
    Platform,
    PlatformError,
    require,
)
from lab.prober import ProbeLog, Prober
from scenarios.migration import DirtyWorkload, HttpWorkload, MigrationSuite, policy_label, workload_label
from scenarios.model import Scenario
from suites.factory import Recorder, VMFactory

pytestmark = [pytest.mark.capability("live_migration"), pytest.mark.xdist_group("migration")]

SETTLE_S = 1.5  # after a move, let the prober see the guest answer again before reading its log
MARKER = "/root/vp-migration-marker"


@runtime_checkable
class MigrationFaults(Protocol):
    """Fault hooks a platform may offer (the qemu lab's ``platform.migrations``)."""

    def progress(self, vm_name: str) -> Any: ...

    def kill_destination(self, vm_name: str) -> int: ...

    def kill_source(self, vm_name: str) -> int: ...

    def set_node_link(self, node: str, up: bool) -> None: ...


@dataclass
class GuestUnderTest:
    """One migrating guest, with what proves it is still itself after a move."""

    vm: VM
    marker: str
    uptime: float
    workload_pid: str | None
    prober: Prober | None
    load: LocustRun | None
    address: str
    problems: list[str] = field(default_factory=list)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def suite(scenario: Scenario) -> MigrationSuite:
    if scenario.suites.migration is None:
        pytest.skip("the scenario has no suites.migration section")
    return scenario.suites.migration


@pytest.fixture
def migratable(platform: Platform, suite: MigrationSuite) -> MigratablePlatform:
    if not isinstance(platform, MigratablePlatform):
        pytest.skip(f"platform {platform.name} cannot live-migrate")
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
    try:
        require(platform, *needed)
    except CapabilityMissing as exc:
        pytest.skip(str(exc))
    nodes = len(platform.nodes())
    if nodes < suite.min_nodes:
        pytest.skip(f"pattern {suite.pattern} needs {suite.min_nodes} nodes; platform {platform.name} has {nodes}")
    return platform


@pytest.fixture
def out_dir(run_dir: Path, request: pytest.FixtureRequest) -> Path:
    directory: Path = run_dir / "migration" / str(request.node.name)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# --- guests ----------------------------------------------------------------------------


def _ssh(vm: VM, access: GuestAccess, command: str, patience_s: float = 120.0) -> str:
    """Run ``command`` over SSH, retrying for ``patience_s``: under TCG on a loaded host a guest can
    be starved of CPU for a while after a move without being a different or broken guest."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with GuestSession(vm.ssh_endpoint(), access, timeout=60) as session:
                return session.run(command, timeout=60, check=True).stdout
        except GuestUnreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _start_guest(
    factory: VMFactory, access: GuestAccess, suite: MigrationSuite, node: str, out: Path
) -> GuestUnderTest:
    vm = factory.create(factory.spec(node=node, network="l2"))
    try:
        factory.platform.wait_running(vm, 120)
        factory.wait_ssh(vm, time.time() + 180)
    except (GuestUnreachable, PlatformError) as exc:
        stderr = getattr(getattr(vm, "process", None), "stderr_tail", lambda: "")()
        pytest.fail(f"{vm.name} on {node} did not boot: {exc}\nqemu: {stderr}\nconsole:\n{vm.console_tail()}")
    marker = secrets.token_hex(8)
    workload_pid: str | None = None
    command = f"echo {marker} > {MARKER}; sync; cut -d' ' -f1 /proc/uptime"
    if isinstance(suite.workload, DirtyWorkload):
        w = suite.workload
        command += (
            f"; setsid vp-dirty {w.mib} {w.rate_mibps} >/dev/null 2>&1 </dev/null &"
            " i=0; while [ ! -s /run/vp-dirty.pid ] && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done;"
            " cat /run/vp-dirty.pid"
        )
    lines = _ssh(vm, access, command).split()
    if isinstance(suite.workload, DirtyWorkload):
        workload_pid = lines[1] if len(lines) > 1 else None
        assert workload_pid, f"{vm.name}: vp-dirty did not start"
    http = vm.http_endpoint()
    load = None
    if isinstance(suite.workload, HttpWorkload):
        w2 = suite.workload
        moves = 2 * suite.round_trips * suite.count * max(1, len(factory.platform.nodes()) - 1)
        bound = min(3600.0, moves * (suite.policy.timeout_s + 30) + 300)  # ends on its own if we die
        load = LocustRun(LoadSpec(f"http://{http}", w2.users, w2.rate, run_time_s=bound), out / f"{vm.name}-locust")
        load.wait_started(60)
        assert "gevent" not in sys.modules, "locust's gevent reached the harness process"
    return GuestUnderTest(vm, marker, float(lines[0]), workload_pid, None, load, str(http))


def _check_same_guest(guest: GuestUnderTest, access: GuestAccess) -> list[str]:
    """Problems with the guest after a move (empty: it is the same guest, still working)."""
    command = f"cat {MARKER}; cut -d' ' -f1 /proc/uptime"
    if guest.workload_pid:
        command += f"; kill -0 {guest.workload_pid} 2>/dev/null && echo workload-running || echo workload-gone"
    try:
        lines = _ssh(guest.vm, access, command).split()
    except GuestUnreachable as exc:
        console = guest.vm.console_tail(12)
        return [f"{guest.vm.name}: unreachable over SSH after the move: {exc}\nconsole tail:\n{console}"]
    problems = []
    if not lines or lines[0] != guest.marker:
        problems.append(f"{guest.vm.name}: marker {lines[:1]} is not the {guest.marker!r} written before the move")
    uptime = float(lines[1]) if len(lines) > 1 else -1.0
    if uptime < guest.uptime:
        problems.append(f"{guest.vm.name}: uptime went from {guest.uptime:.1f} s to {uptime:.1f} s (rebooted)")
    guest.uptime = max(guest.uptime, uptime)
    if guest.workload_pid and (len(lines) < 3 or lines[2] != "workload-running"):
        problems.append(f"{guest.vm.name}: the memory workload (pid {guest.workload_pid}) is no longer running")
    if str(guest.vm.http_endpoint()) != guest.address:
        problems.append(f"{guest.vm.name}: its address changed from {guest.address} to {guest.vm.http_endpoint()}")
    return problems


def _stop_guest(guest: GuestUnderTest) -> None:
    if guest.load is not None:
        guest.load.stop()
    if guest.prober is not None:
        guest.prober.stop()


def _start_probers(guests: Sequence[GuestUnderTest], suite: MigrationSuite, out: Path, leg: int) -> None:
    """A prober process per guest for one wave of moves (started before, stopped after it), so
    the guests are not kept busy answering 100 requests a second between moves."""
    for guest in guests:
        http = guest.vm.http_endpoint()
        guest.prober = Prober(
            http.host, http.port, out / f"{guest.vm.name}-leg{leg}.probe", suite.probe, suite.probe_interval_ms
        )
    for guest in guests:
        assert guest.prober is not None
        if not guest.prober.wait_answering(60):
            pytest.fail(f"{guest.vm.name}: the prober got no answer from {guest.vm.http_endpoint()} before the move")


def _stop_probers(guests: Sequence[GuestUnderTest]) -> None:
    for guest in guests:
        if guest.prober is not None:
            guest.prober.stop()


# --- one move ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    guest: GuestUnderTest
    target: str


def _labels(result: MigrationResult, suite: MigrationSuite, policy: str, leg: int) -> dict[str, str]:
    return {
        "vm": result.vm,
        "source": result.source,
        "target": result.target,
        "pattern": suite.pattern,
        "policy": policy,
        "workload": workload_label(suite.workload),
        "mode": result.mode,
        "leg": str(leg),
        "time_source": result.time_source,
    }


def _record(
    record: Recorder, access: GuestAccess, suite: MigrationSuite, guest: GuestUnderTest, result: MigrationResult,
    policy: str, leg: int,
) -> list[str]:  # fmt: skip
    labels = _labels(result, suite, policy, leg)
    if not result.ok:
        record("migration.failed", 1, "count", error=(result.error or "")[:200], **labels)
        return [f"{result.vm} {result.source}->{result.target}: {result.error}"]
    record("migration.total_s", result.total_s, "s", **labels)
    if result.downtime_ms is not None:
        record("migration.downtime_ms", result.downtime_ms, "ms", **labels)
    if result.setup_s is not None:
        record("migration.setup_s", result.setup_s, "s", **labels)
    if result.transferred_mib is not None:
        record("migration.transferred_mib", result.transferred_mib, "MiB", **labels)
    if guest.prober is not None:
        gap = ProbeLog.read(guest.prober.out).longest_gap(result.started, result.finished)
        if gap is None:
            return [f"{result.vm}: the prober never got an answer around the move"]
        record("migration.guest_downtime_ms", gap.ms, "ms", answered=str(gap.end is not None), **labels)
    if guest.load is not None:
        load = window(guest.load.records(), result.started, result.finished + SETTLE_S)
        record("migration.http_failures", load.failures, "count", requests=str(load.requests), **labels)
        if load.p99_ms is not None:
            record("migration.http_p99_ms", load.p99_ms, "ms", **labels)
    return _check_same_guest(guest, access)


def _run_wave(
    platform: MigratablePlatform, moves: Sequence[Move], policy: MigrationPolicy, parallel: int
) -> list[tuple[Move, MigrationResult]]:
    def one(move: Move) -> MigrationResult:
        try:
            return platform.migrate(move.guest.vm, move.target, policy)
        except PlatformError as exc:
            now = time.time()
            vm = move.guest.vm
            return MigrationResult(vm.name, vm.node, move.target, False, policy.mode, now, now, 0.0, error=str(exc))

    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="migrate") as pool:
        return list(zip(moves, pool.map(one, moves), strict=True))


def _evacuate(
    platform: MigratablePlatform, node: str, guests: Sequence[GuestUnderTest], timeout: float
) -> list[tuple[Move, MigrationResult]]:
    """Drain ``node`` the platform's way (``evacuate``: cordon + evict on KubeVirt)."""
    drain: Callable[..., list[MigrationResult]] = getattr(platform, "evacuate")  # noqa: B009 - NODE_DRAIN checked
    by_name = {g.vm.name: g for g in guests}
    results = drain(node, timeout=timeout)
    return [(Move(by_name[r.vm], r.target), r) for r in results if r.vm in by_name]


def _plan(
    suite: MigrationSuite, nodes: Sequence[str], guests: Sequence[GuestUnderTest], home: str
) -> Iterator[tuple[str, list[Move], int]]:
    """Waves of moves: (kind, moves, parallelism). ``kind`` is ``migrate`` or ``drain:<node>``."""
    away = [n for n in nodes if n != home]
    for _trip in range(suite.round_trips):
        if suite.pattern == "round_robin":
            for _hop in range(len(nodes)):
                yield "migrate", [Move(g, nodes[(nodes.index(g.vm.node) + 1) % len(nodes)]) for g in guests], 1
        elif suite.pattern == "evacuate":
            yield f"drain:{home}", [], len(guests)
            yield "migrate", [Move(g, home) for g in guests], len(guests)
        else:
            k = suite.concurrency if suite.pattern == "parallel" else 1
            yield "migrate", [Move(g, away[i % len(away)]) for i, g in enumerate(guests)], k
            yield "migrate", [Move(g, home) for g in guests], k


# --- the suite ----------------------------------------------------------------------------


def test_migration_round_trips(
    migratable: MigratablePlatform, suite: MigrationSuite, vm_factory: VMFactory, guest_access: GuestAccess,
    record: Recorder, out_dir: Path,
) -> None:  # fmt: skip
    nodes = list(migratable.nodes())
    home = nodes[0]
    policy = suite.policy.policy()
    label = policy_label(policy)
    guests: list[GuestUnderTest] = []
    problems: list[str] = []
    try:
        with ThreadPoolExecutor(suite.concurrency) as pool:
            starts = [
                pool.submit(
                    _start_guest,
                    vm_factory,
                    guest_access,
                    suite,
                    nodes[i % len(nodes)] if suite.pattern == "round_robin" else home,
                    out_dir,
                )
                for i in range(suite.count)
            ]
            guests = [f.result() for f in starts]
        for leg, (kind, moves, parallel) in enumerate(_plan(suite, nodes, guests, home)):
            _start_probers(guests, suite, out_dir, leg)
            try:
                if kind.startswith("drain:"):
                    done = _evacuate(migratable, kind.split(":", 1)[1], guests, policy.timeout_s * len(guests))
                    wave_label = "drain"
                else:
                    moves = [m for m in moves if m.target != m.guest.vm.node]
                    done = _run_wave(migratable, moves, policy, parallel)
                    wave_label = label
                time.sleep(SETTLE_S)
            finally:
                _stop_probers(guests)
            for move, result in done:
                problems += _record(record, guest_access, suite, move.guest, result, wave_label, leg)
            if problems:
                break
    finally:
        for guest in guests:
            _stop_guest(guest)
    assert not problems, "; ".join(problems)


# --- faults -------------------------------------------------------------------------------


@pytest.fixture
def faults(migratable: MigratablePlatform, suite: MigrationSuite) -> MigrationFaults:
    if not suite.faults:
        pytest.skip("faults: false in the scenario")
    hooks = getattr(migratable, "migrations", None)
    if not isinstance(hooks, MigrationFaults):
        pytest.skip(f"platform {migratable.name} offers no migration fault hooks")
    return hooks


def _fault_setup(
    migratable: MigratablePlatform, suite: MigrationSuite, factory: VMFactory, access: GuestAccess, out: Path
) -> tuple[GuestUnderTest, str, str, MigrationPolicy]:
    nodes = list(migratable.nodes())
    guest = _start_guest(factory, access, suite, nodes[0], out)
    policy = MigrationPolicy("precopy", suite.fault_bandwidth_mibps, None, suite.fault_timeout_s)
    return guest, nodes[0], nodes[1], policy


def _start_and_wait_active(
    migratable: MigratablePlatform, faults: MigrationFaults, pool: ThreadPoolExecutor, guest: GuestUnderTest,
    target: str, policy: MigrationPolicy,
) -> tuple[Future[MigrationResult], Any]:  # fmt: skip
    future = pool.submit(migratable.migrate, guest.vm, target, policy)
    end = time.monotonic() + 60
    while time.monotonic() < end and not future.done():
        progress = faults.progress(guest.vm.name)
        if progress is not None and progress.status == "active" and progress.transferred_bytes > 4 * 1024 * 1024:
            return future, progress
        time.sleep(0.05)
    pytest.fail(f"{guest.vm.name}: the migration never became active: {future.result() if future.done() else ''}")


def _fault_labels(result: MigrationResult, fault: str) -> dict[str, str]:
    return {"vm": result.vm, "source": result.source, "target": result.target, "fault": fault, "mode": result.mode}


def test_fault_link_down_cancels(
    migratable: MigratablePlatform, suite: MigrationSuite, faults: MigrationFaults, vm_factory: VMFactory,
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
        _stop_guest(guest)
    record("migration.fault_reported_s", result.finished - cut, "s", **_fault_labels(result, "link_down"))
    assert not result.ok, f"the migration succeeded with the link down: {result}"
    assert guest.vm.node == source, f"the guest should still be on {source}, it is on {guest.vm.node}"
    assert result.finished - result.started <= policy.timeout_s + CANCEL_SLACK_S, result
    problems = _check_same_guest(guest, guest_access)
    assert not problems, "; ".join(problems)


CANCEL_SLACK_S = 30.0  # cancel + cleanup after the policy timeout; a bound against hangs, not a timing


def test_fault_destination_killed(
    migratable: MigratablePlatform, suite: MigrationSuite, faults: MigrationFaults, vm_factory: VMFactory,
    guest_access: GuestAccess, record: Recorder, out_dir: Path,
) -> None:  # fmt: skip
    guest, source, target, policy = _fault_setup(migratable, suite, vm_factory, guest_access, out_dir)
    try:
        with ThreadPoolExecutor(1) as pool:
            future, _ = _start_and_wait_active(migratable, faults, pool, guest, target, policy)
            killed = time.time()
            pid = faults.kill_destination(guest.vm.name)
            result = future.result(timeout=policy.timeout_s + 60)
    finally:
        _stop_guest(guest)
    record("migration.fault_reported_s", result.finished - killed, "s", **_fault_labels(result, "destination_killed"))
    assert not result.ok, f"the migration succeeded without its destination: {result}"
    assert guest.vm.node == source
    assert not _pid_alive(pid), f"destination qemu {pid} is still there"
    problems = _check_same_guest(guest, guest_access)
    assert not problems, "; ".join(problems)


def test_fault_source_killed(
    migratable: MigratablePlatform, suite: MigrationSuite, faults: MigrationFaults, vm_factory: VMFactory,
    guest_access: GuestAccess, record: Recorder, out_dir: Path,
) -> None:  # fmt: skip
    guest, _source, target, policy = _fault_setup(migratable, suite, vm_factory, guest_access, out_dir)
    try:
        with ThreadPoolExecutor(1) as pool:
            future, progress = _start_and_wait_active(migratable, faults, pool, guest, target, policy)
            killed = time.time()
            faults.kill_source(guest.vm.name)
            result = future.result(timeout=policy.timeout_s + 60)
    finally:
        _stop_guest(guest)
    labels = _fault_labels(result, "source_killed")
    record("migration.failed", 1, "count", error=(result.error or "")[:200], **labels)
    record("migration.lost_guests", 1, "count", **labels)
    record("migration.fault_reported_s", result.finished - killed, "s", **labels)
    assert not result.ok and result.error and "lost" in result.error, result
    destination = getattr(progress, "destination_pid", None)
    if destination is not None:
        assert not _pid_alive(destination), f"destination qemu {destination} was left running"
    alive = getattr(guest.vm, "alive", None)
    if alive is not None:
        assert not alive(), "the guest's source process should be gone"
    vm_factory.delete(guest.vm)  # cleanup of a lost guest must work too


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False
