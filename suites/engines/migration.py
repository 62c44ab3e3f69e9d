"""The live-migration engine: guests under a workload, waves of moves, and proof each guest survived.

``suites/test_migration.py`` drives it. Guests boot on the first node (``round_robin``: spread
over all nodes), run the scenario's workloads (idle, ``vp-dirty`` memory rewriting,
``vp-memcheck`` verified memory rewriting, locust HTTP load in its own process), and move in
waves planned from the scenario's ``pattern``. A prober process per guest
(``virtproof.instruments.prober``, not in the harness's control path) runs during each wave; its
longest gap without an answer is the guest-observed downtime.

After each move the guest must be the same guest and intact (``integrity``): a value written
before is read back over SSH, its boot id and uptime did not change, its memory workload still
runs, its kernel logged no oops, panic, stall or lockup, every page of its vp-memcheck region
holds what it must (``migration.corrupted_pages``), and its HTTP server answered at least one
request around the move. Only the Platform seam is used (``migrate``, and ``evacuate`` through
``Drainable``), so it runs unchanged on KubeVirt.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from virtproof.instruments.load import LoadSpec, LocustRun, window
from virtproof.instruments.prober import ProbeLog, Prober
from virtproof.lab.guest import GuestSession
from virtproof.lab.platform import (
    VM,
    Capability,
    CapabilityMissing,
    Drainable,
    GuestAccess,
    GuestUnreachable,
    MigratablePlatform,
    MigrationPolicy,
    MigrationResult,
    Platform,
    PlatformError,
    require,
)
from virtproof.scenarios.migration import InjectCorruption, MigrationSuite, workload_label
from virtproof.suites.engines.integrity import (
    DMESG,
    INJECTED,
    UNKNOWN,
    Cause,
    MemcheckReport,
    MemcheckUnavailable,
    corrupt_memcheck,
    kernel_trouble,
    start_memcheck,
    trouble_key,
    verify_memcheck,
)
from virtproof.suites.factory import Recorder, VMFactory

SETTLE_S = 1.5  # after a move, let the prober see the guest answer again before reading its log
# ...and at most this long for every path of a moved guest to answer again (``settle_probers``):
# through a Service the guest answers only once the target pod is Ready and the endpoints caught
# up, and a TCG guest on a busy host may take seconds more; stopped earlier, the gap has no end.
SETTLE_MAX_S = 60.0
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
    memcheck: bool = False  # vp-memcheck runs (workload_pid is its pid): verify it after every move
    kernel_seen: set[str] = field(default_factory=set)  # kernel trouble already reported (or there at boot)
    report: MemcheckReport | None = None  # the latest vp-memcheck verify
    corrupted: int = 0  # bad pages the latest check found (since the check before)
    trouble: list[str] = field(default_factory=list)  # new kernel trouble the latest check found


@dataclass
class MoveContext:
    """What the suite knows beyond one move: the cause a corruption would have, injected damage."""

    cause: Cause = UNKNOWN  # from the platform's facts (integrity.defect_cause)
    injected: set[str] = field(default_factory=set)  # VMs whose memcheck region the suite damaged


@dataclass(frozen=True)
class Move:
    guest: GuestUnderTest
    target: str


def migration_unavailable(platform: Platform, needed: Sequence[Capability]) -> str | None:
    """Why ``platform`` cannot carry out the suite's moves (None: it can), in words a user can act
    on: a platform lacks ``live_migration`` above all when it has fewer than two nodes to move
    between (KubeVirt: schedulable, untainted, with virt-handler), which "lacks: live_migration"
    alone does not say."""
    try:
        require(platform, *needed)
    except CapabilityMissing as exc:
        reason = str(exc)
        if Capability.LIVE_MIGRATION in needed and Capability.LIVE_MIGRATION not in platform.capabilities:
            nodes = list(platform.nodes())
            if len(nodes) < 2:
                have = f"only one schedulable node ({nodes[0]})" if nodes else "no schedulable node"
                reason = f"{have}: live migration needs two ({reason})"
        return reason
    return None


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
    dirty = suite.dirty
    if dirty is not None:
        command += (
            f"; setsid vp-dirty {dirty.mib} {dirty.rate_mibps} >/dev/null 2>&1 </dev/null &"
            " i=0; while [ ! -s /run/vp-dirty.pid ] && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done;"
            " cat /run/vp-dirty.pid"
        )
    boot_id, *lines = guest_ssh(vm, access, command).split()
    if dirty is not None:
        workload_pid = lines[1] if len(lines) > 1 else None
        if not workload_pid:
            raise GuestTrouble(f"{vm.name}: vp-dirty did not start")
    memcheck = suite.memcheck
    report = None
    if memcheck is not None:
        try:
            workload_pid = start_memcheck(lambda c: guest_ssh(vm, access, c), memcheck)
            report = verify_memcheck(lambda c: guest_ssh(vm, access, c))
        except (MemcheckUnavailable, GuestUnreachable) as exc:
            raise GuestTrouble(f"{vm.name}: {exc}") from exc
        if report.bad_pages_total:
            raise GuestTrouble(f"{vm.name}: vp-memcheck found bad pages before any move: {report.first_bad()}")
    seen = {trouble_key(line) for line in kernel_trouble(guest_ssh(vm, access, DMESG) + vm.console_tail(400))}
    http = vm.http_endpoint()
    load = None
    http_load = suite.http
    if http_load is not None:
        w2 = http_load
        moves = 2 * max(1, suite.round_trips) * suite.count * max(1, len(factory.platform.nodes()) - 1)
        moves += len(suite.sweep.modes) * suite.sweep.steps if suite.sweep is not None else 0
        bound = min(3600.0, moves * (suite.policy.timeout_s + 30) + 300)  # ends on its own if we die
        load = LocustRun(LoadSpec(f"http://{http}", w2.users, w2.rate, run_time_s=bound), out / f"{vm.name}-locust")
        load.wait_started(60)
        if "gevent" in sys.modules:
            raise GuestTrouble("locust's gevent reached the harness process")
    return GuestUnderTest(vm, marker, float(lines[0]), workload_pid, {}, load, boot_id, memcheck=memcheck is not None,
                          kernel_seen=seen, report=report)  # fmt: skip


def check_same_guest(guest: GuestUnderTest, access: GuestAccess, cause: Cause = UNKNOWN) -> list[str]:
    """Problems with the guest after a move (empty: it is the same guest, still working, intact).

    Identity is what the guest is, never where it is reached: its boot id, a value written before
    the move, an uptime that did not reset. On a platform the address may change with the node.
    Intact: no new kernel trouble in its log or console, and (with vp-memcheck) every page of its
    region verified; ``guest.corrupted``, ``guest.report`` and ``guest.trouble`` say what was found."""
    command = f"cat {MARKER}; cut -d' ' -f1 /proc/uptime; cat {BOOT_ID}"
    if guest.workload_pid:
        command += f"; kill -0 {guest.workload_pid} 2>/dev/null && echo workload-running || echo workload-gone"
    command += f"; echo --dmesg--; {DMESG}"
    guest.corrupted, guest.trouble = 0, []
    try:
        head, _, dmesg = guest_ssh(guest.vm, access, command).partition("--dmesg--")
    except GuestUnreachable as exc:
        console = guest.vm.console_tail(12)
        trouble = kernel_trouble(guest.vm.console_tail(400))
        said = f"\nits kernel said: {'; '.join(trouble[:6])} ({cause.evidence})" if trouble else ""
        return [f"{guest.vm.name}: unreachable over SSH after the move: {exc}{said}\nconsole tail:\n{console}"]
    lines = head.split()
    problems = []
    logs = dmesg + "\n" + guest.vm.console_tail(400)
    new = [t for t in kernel_trouble(logs) if trouble_key(t) not in guest.kernel_seen]
    if new:
        guest.trouble = new
        guest.kernel_seen.update(trouble_key(t) for t in new)
        problems.append(
            f"{guest.vm.name}: its kernel reports trouble after the move (corrupted memory? cause "
            f"{cause.label}: {cause.evidence}):\n" + "\n".join(new[:12])
            + f"\nconsole tail:\n{guest.vm.console_tail(30)}"
        )
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
    elif guest.memcheck:
        try:
            report = verify_memcheck(lambda c: guest_ssh(guest.vm, access, c))
        except (MemcheckUnavailable, GuestUnreachable) as exc:
            problems.append(f"{guest.vm.name}: its memory could not be verified after the move: {exc}")
        else:
            guest.report, guest.corrupted = report, report.found
            if report.found:
                problems.append(
                    f"{guest.vm.name}: {report.found} corrupted page(s) of its {report.mib} MiB vp-memcheck region "
                    f"after the move, whatever the platform said (cause {cause.label}: {cause.evidence}); first: "
                    + report.first_bad(8)
                )
    return problems


def inject_corruption(guest: GuestUnderTest, access: GuestAccess, spec: InjectCorruption) -> str:
    """The detector's self-test: damage a page of ``guest``'s vp-memcheck region behind its back."""
    return corrupt_memcheck(lambda c: guest_ssh(guest.vm, access, c), spec.page, spec.how)


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


def settle_probers(moved: Iterable[tuple[Iterable[Prober], MigrationResult]], bound_s: float = SETTLE_MAX_S) -> None:
    """After a wave, keep its probers running until every path of every guest that moved answered
    again after its longest gap around the move (at least ``SETTLE_S``, at most ``bound_s``), so
    each guest-observed downtime has an end and the Service's lag behind the direct path is known.
    A path that never answers again is left open-ended (``answered=False``) when the bound passes.
    ``moved``: each move's probers (one per path) and its result."""
    time.sleep(SETTLE_S)
    pending = [(prober, *result.observed_window) for probers, result in moved if result.ok for prober in probers]
    deadline = time.monotonic() + bound_s
    while pending and time.monotonic() < deadline:
        still = []
        for prober, start, end in pending:
            gap = ProbeLog.read(prober.out).longest_gap(start, end)
            if gap is not None and gap.end is None and prober.popen.poll() is None:
                still.append((prober, start, end))
        pending = still
        if pending:
            time.sleep(0.25)


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
    policy: str, leg: int, context: MoveContext | None = None,
) -> list[str]:  # fmt: skip
    """Record one move's samples; return its problems (a failed move, or a guest that is not itself,
    not intact, or whose service answered nothing around the move)."""
    context = context or MoveContext()
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
    problems: list[str] = []
    if guest.load is not None:
        load = window(guest.load.records(), window_start, window_end + SETTLE_S)
        record("migration.http_failures", load.failures, "count", requests=str(load.requests), **labels)
        if load.p99_ms is not None:
            record("migration.http_p99_ms", load.p99_ms, "ms", **labels)
        if load.requests >= 3 and load.failures == load.requests:  # a dead httpd in a guest that still answers SSH
            problems.append(f"{result.vm}: every HTTP request around the move failed "
                            f"({load.failures} of {load.requests})")  # fmt: skip
    cause = INJECTED if guest.vm.name in context.injected else context.cause
    problems += check_same_guest(guest, access, cause)
    record_integrity(record, guest, labels, cause)
    return problems


def record_integrity(record: Recorder, guest: GuestUnderTest, labels: dict[str, str], cause: Cause) -> None:
    """What the latest check found: corrupted pages (with the first bad addresses), kernel trouble,
    and how long verifying the region took per GiB."""
    if guest.trouble:
        record("migration.guest_kernel_errors", len(guest.trouble), "count", cause=cause.label,
               first=" | ".join(guest.trouble[:3])[:400], **labels)  # fmt: skip
    report = guest.report
    if not guest.memcheck or report is None:
        return
    if guest.corrupted:
        record("migration.corrupted_pages", guest.corrupted, "pages", cause=cause.label,
               first_bad=report.first_bad()[:600], **labels)  # fmt: skip
    else:
        record("migration.corrupted_pages", 0, "pages", cause="none", **labels)
    record("migration.verify_s_per_gib", report.s_per_gib, "s/GiB", mib=str(report.mib), **labels)


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


def most_at_once(results: Sequence[MigrationResult]) -> int:
    """The most moves that were in flight at the same moment (seen by the harness)."""
    edges = sorted(
        (t, step) for r in results if r.ok for t, step in ((r.observed_window[0], 1), (r.observed_window[1], -1))
    )  # at a tie the end (-1) comes first: one move ending as the next starts is not overlap
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def plan(
    suite: MigrationSuite, nodes: Sequence[str], guests: Sequence[GuestUnderTest], home: str
) -> Iterator[tuple[str, list[Move], int]]:
    """Waves of moves: (kind, moves, parallelism). ``kind`` is ``migrate`` or ``drain:<node>``."""
    away = [n for n in nodes if n != home]
    for _trip in range(suite.round_trips):
        if suite.pattern == "round_robin":
            for _hop in range(len(nodes)):
                yield "migrate", [Move(g, nodes[(nodes.index(g.vm.node) + 1) % len(nodes)]) for g in guests], 1
        elif suite.pattern == "evacuate":  # the platform drains at its own pace; back `concurrency` at a time
            yield f"drain:{home}", [], len(guests)
            yield "migrate", [Move(g, home) for g in guests], suite.concurrency
        else:
            k = suite.concurrency if suite.pattern == "parallel" else 1
            yield "migrate", [Move(g, away[i % len(away)]) for i, g in enumerate(guests)], k
            yield "migrate", [Move(g, home) for g in guests], k
