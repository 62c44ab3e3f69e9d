"""The live-migration engine: guests under a workload, waves of moves, and proof each guest survived.

``suites/test_migration.py`` drives it. Guests boot on the first node (``round_robin``: spread
over all nodes), run the scenario's workload (idle, ``vp-dirty`` memory rewriting, or locust
HTTP load in its own process), and move in waves planned from the scenario's ``pattern``. A
prober process per guest (``virtproof.instruments.prober``, not in the harness's control path)
runs during each wave; its longest gap without an answer is the guest-observed downtime.

After each move the guest must be the same guest: a value written before is read back over
SSH, its uptime did not reset, and its memory workload still runs. Only the Platform seam is
used (``migrate``, and ``evacuate`` through ``Drainable``), so it runs unchanged on KubeVirt.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from virtproof.instruments.load import LoadSpec, LocustRun, window
from virtproof.instruments.prober import ProbeLog, Prober
from virtproof.lab.guest import GuestSession
from virtproof.lab.platform import (
    VM,
    Drainable,
    GuestAccess,
    GuestUnreachable,
    MigratablePlatform,
    MigrationPolicy,
    MigrationResult,
    PlatformError,
)
from virtproof.scenarios.migration import DirtyWorkload, HttpWorkload, MigrationSuite, workload_label
from virtproof.suites.factory import Recorder, VMFactory

SETTLE_S = 1.5  # after a move, let the prober see the guest answer again before reading its log
MARKER = "$HOME/.vp-migration-marker"  # the login user's home: root on the micro guest, the cloud user elsewhere
BOOT_ID = "/proc/sys/kernel/random/boot_id"


class GuestTrouble(AssertionError):
    """A guest could not be brought into the state a move needs (it did not boot, no prober answer)."""


@dataclass
class GuestUnderTest:
    """One migrating guest, with what proves it is still itself after a move."""

    vm: VM
    marker: str
    uptime: float
    workload_pid: str | None
    probers: dict[str, Prober]  # by path: "service" (through the platform's service layer), "direct"
    load: LocustRun | None
    boot_id: str  # the guest kernel's random boot id: a different one means a different (rebooted) guest
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Move:
    guest: GuestUnderTest
    target: str


# --- guests ----------------------------------------------------------------------------


def guest_ssh(vm: VM, access: GuestAccess, command: str, patience_s: float = 120.0) -> str:
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


def start_guest(factory: VMFactory, access: GuestAccess, suite: MigrationSuite, node: str, out: Path) -> GuestUnderTest:
    """Boot a guest on ``node`` on the L2 segment, mark it, and start its workload."""
    vm = factory.create(factory.spec(node=node, network="l2"))
    try:
        factory.platform.wait_running(vm, 120)
        factory.wait_ssh(vm, time.time() + 180)
    except (GuestUnreachable, PlatformError) as exc:
        raise GuestTrouble(
            f"{vm.name} on {node} did not boot: {exc}\n{vm.diagnostics()}\nconsole:\n{vm.console_tail()}"
        ) from exc
    marker = secrets.token_hex(8)
    workload_pid: str | None = None
    command = f"echo {marker} > {MARKER}; sync; cat {BOOT_ID}; cut -d' ' -f1 /proc/uptime"
    if isinstance(suite.workload, DirtyWorkload):
        w = suite.workload
        command += (
            f"; setsid vp-dirty {w.mib} {w.rate_mibps} >/dev/null 2>&1 </dev/null &"
            " i=0; while [ ! -s /run/vp-dirty.pid ] && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done;"
            " cat /run/vp-dirty.pid"
        )
    boot_id, *lines = guest_ssh(vm, access, command).split()
    if isinstance(suite.workload, DirtyWorkload):
        workload_pid = lines[1] if len(lines) > 1 else None
        if not workload_pid:
            raise GuestTrouble(f"{vm.name}: vp-dirty did not start")
    http = vm.http_endpoint()
    load = None
    if isinstance(suite.workload, HttpWorkload):
        w2 = suite.workload
        moves = 2 * suite.round_trips * suite.count * max(1, len(factory.platform.nodes()) - 1)
        bound = min(3600.0, moves * (suite.policy.timeout_s + 30) + 300)  # ends on its own if we die
        load = LocustRun(LoadSpec(f"http://{http}", w2.users, w2.rate, run_time_s=bound), out / f"{vm.name}-locust")
        load.wait_started(60)
        if "gevent" in sys.modules:
            raise GuestTrouble("locust's gevent reached the harness process")
    return GuestUnderTest(vm, marker, float(lines[0]), workload_pid, {}, load, boot_id)


def check_same_guest(guest: GuestUnderTest, access: GuestAccess) -> list[str]:
    """Problems with the guest after a move (empty: it is the same guest, still working).

    Identity is what the guest is, never where it is reached: its boot id, a value written before
    the move, an uptime that did not reset. On a platform the address may change with the node."""
    command = f"cat {MARKER}; cut -d' ' -f1 /proc/uptime; cat {BOOT_ID}"
    if guest.workload_pid:
        command += f"; kill -0 {guest.workload_pid} 2>/dev/null && echo workload-running || echo workload-gone"
    try:
        lines = guest_ssh(guest.vm, access, command).split()
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
    if len(lines) < 3 or lines[2] != guest.boot_id:
        problems.append(f"{guest.vm.name}: boot id {lines[2:3]} is not {guest.boot_id!r}: a different guest")
    if guest.workload_pid and (len(lines) < 4 or lines[3] != "workload-running"):
        problems.append(f"{guest.vm.name}: the memory workload (pid {guest.workload_pid}) is no longer running")
    return problems


def stop_guest(guest: GuestUnderTest) -> None:
    if guest.load is not None:
        guest.load.stop()
    for prober in guest.probers.values():
        prober.stop()


def start_probers(guests: Sequence[GuestUnderTest], suite: MigrationSuite, out: Path, leg: int) -> None:
    """A prober process per guest and path for one wave of moves (started before, stopped after
    it), so the guests are not kept busy answering 100 requests a second between moves."""
    for guest in guests:
        guest.probers = {
            path: Prober(ep.host, ep.port, out / f"{guest.vm.name}-leg{leg}-{path}.probe", suite.probe,
                         suite.probe_interval_ms)
            for path, ep in guest.vm.http_paths().items()
        }
    for guest in guests:
        for path, prober in guest.probers.items():
            if not prober.wait_answering(60):
                raise GuestTrouble(f"{guest.vm.name}: the prober got no answer on its {path} path "
                                   f"{guest.vm.http_paths()[path]} before the move")


def stop_probers(guests: Sequence[GuestUnderTest]) -> None:
    for guest in guests:
        for prober in guest.probers.values():
            prober.stop()


# --- moves and what they measured -------------------------------------------------------


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
        "resolution_s": f"{result.resolution_s:g}",
    }


def record_move(
    record: Recorder, access: GuestAccess, suite: MigrationSuite, guest: GuestUnderTest, result: MigrationResult,
    policy: str, leg: int,
) -> list[str]:  # fmt: skip
    """Record one move's samples; return its problems (a failed move, or a guest that is not itself)."""
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
    if result.observed_started is not None and result.time_source == "platform" and result.resolution_s:
        seen_start, seen_end = result.observed_started, result.observed_finished or result.finished
        record("migration.observed_total_s", seen_end - seen_start, "s", **{**labels, "time_source": "harness"})
    # The probers and the load run on this host's clock: read them in the harness's window, widened
    # by the platform times' resolution (a metav1.Time is truncated to the second).
    window_start, window_end = result.observed_window
    gaps = {}
    for path, prober in guest.probers.items():
        gap = ProbeLog.read(prober.out).longest_gap(window_start, window_end)
        if gap is None:
            return [f"{result.vm}: the prober never got an answer on its {path} path around the move"]
        gaps[path] = gap
        record("migration.guest_downtime_ms", gap.ms, "ms", answered=str(gap.end is not None), path=path,
               **labels)
    service, direct = gaps.get("service"), gaps.get("direct")
    if service is not None and direct is not None and service.end is not None and direct.end is not None:
        # How much later the guest answers through the Service than on its own address: the
        # target pod's readiness, the EndpointSlice update and kube-proxy catching up.
        record("migration.endpoint_switch_lag_ms", max(0.0, service.end - direct.end) * 1000, "ms", **labels)
    if guest.load is not None:
        load = window(guest.load.records(), window_start, window_end + SETTLE_S)
        record("migration.http_failures", load.failures, "count", requests=str(load.requests), **labels)
        if load.p99_ms is not None:
            record("migration.http_p99_ms", load.p99_ms, "ms", **labels)
    return check_same_guest(guest, access)


def run_wave(
    platform: MigratablePlatform, moves: Sequence[Move], policy: MigrationPolicy, parallel: int
) -> list[tuple[Move, MigrationResult]]:
    """Carry out ``moves``, ``parallel`` at a time; a move the platform refuses is a failed result."""

    def one(move: Move) -> MigrationResult:
        try:
            return platform.migrate(move.guest.vm, move.target, policy)
        except PlatformError as exc:
            now = time.time()
            vm = move.guest.vm
            return MigrationResult(vm.name, vm.node, move.target, False, policy.mode, now, now, 0.0, error=str(exc))

    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="migrate") as pool:
        return list(zip(moves, pool.map(one, moves), strict=True))


def evacuate(
    drainable: Drainable, node: str, guests: Sequence[GuestUnderTest], timeout: float
) -> list[tuple[Move, MigrationResult]]:
    """Drain ``node`` the platform's way (qemu: migrate all; KubeVirt: cordon + evict)."""
    by_name = {g.vm.name: g for g in guests}
    results = drainable.evacuate(node, timeout=timeout)
    return [(Move(by_name[r.vm], r.target), r) for r in results if r.vm in by_name]


def plan(
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
