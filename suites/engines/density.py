"""The density ramp: fill one node with guests in steps until a stop condition holds.

Only the Platform protocol is used to create and delete guests (``create_vm`` from a bounded
thread pool, the SSH banner through ``virtproof.lab.guest.wait_for_banner``); host measurements come from
``virtproof.instruments.hostmetrics`` and need the ``host_metrics`` capability (the VM's qemu pid, this host's
/proc). Samples are recorded as they happen (names: ``virtproof.core.density_metrics``):

- per guest: ``density.time_to_ssh_s`` (labels ``step``, ``vms_running``: the step's target),
  ``density.boot_failed``; per sampled guest ``density.vm_overhead_mib`` (qemu RSS minus the
  guest RAM the guest does not report free in its own ``/proc/meminfo``), ``density.guest_used_mib``
- per step: ``density.vms_running``, ``density.lost_vms``, ``density.host_memory_fraction``,
  ``density.host_cpu_fraction`` (while booting), ``density.idle_host_cpu_fraction`` and
  ``density.idle_vm_cpu_fraction`` (settle window), ``density.qemu_rss_mib`` (mean),
  ``density.harness_cpu_fraction`` and ``density.harness_cpu_share`` (of host busy CPU),
  ``density.harness_threads``, ``density.host_load1``
- per ramp: ``density.stop_reason`` (value: guests running; label ``reason``) and
  ``density.capacity_vms``.

Every guest created is deleted in ``finally``, also on KeyboardInterrupt in the middle of a step.
"""

from __future__ import annotations

import http.client
import itertools
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from virtproof.core import density_metrics as dm
from virtproof.instruments import hostmetrics as hm
from virtproof.lab.guest import GuestSession, HostKeyMismatch, wait_for_banner
from virtproof.lab.platform import (
    VM,
    Capability,
    GuestAccess,
    GuestUnreachable,
    HostProcesses,
    Platform,
    PlatformError,
    VMSpec,
    feature,
)
from virtproof.scenarios.density import DensitySuite
from virtproof.scenarios.model import Guest
from virtproof.suites.engines.density_stats import HOST_MEMORY, StepStats, capacity, decide, projected_memory_fraction

HARNESS_OOM_SCORE = -500  # the OOM killer takes guests before the harness that measures them
GUEST_OOM_SCORE = 500
UNKNOWN_VM_MIB = 128.0  # per-VM host cost assumed beyond guest RAM until one was measured


class Record(Protocol):
    def __call__(self, metric: str, value: float, unit: str, **labels: Any) -> object: ...


@dataclass(frozen=True)
class Boot:
    name: str
    vm: VM | None
    time_to_ssh_s: float | None
    error: str | None = None
    out_of_memory: bool = False


@dataclass
class RampOutcome:
    ramp: int
    steps: list[StepStats] = field(default_factory=list)
    stop_reason: str = ""
    detail: str = ""
    capacity_vms: int = 0
    created: int = 0
    deleted: int = 0
    primer_time_to_ssh_s: float | None = None

    @property
    def leftover(self) -> int:
        return self.created - self.deleted


def _is_memory_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (isinstance(exc, OSError) and exc.errno == 12) or "cannot allocate memory" in text or "out of memory" in text


class DensityRamp:
    """One ramp of ``suite`` on ``platform``. ``run()`` returns what it found; nothing stays running."""

    def __init__(
        self,
        platform: Platform,
        suite: DensitySuite,
        guest: Guest,
        record: Record,
        prefix: str,
        access: GuestAccess | None = None,
        ramp: int = 0,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.platform = platform
        self.suite = suite
        self.guest = guest
        self.record = record
        self.prefix = prefix
        self.access = access
        self.ramp = ramp
        self.log = log
        self.memory_mib = suite.memory or guest.memory
        self.node = suite.node or platform.nodes()[0]
        self.processes: HostProcesses | None = None
        if Capability.HOST_METRICS in platform.capabilities:
            self.processes = feature(platform, HostProcesses, Capability.HOST_METRICS)
        self.host_metrics = self.processes is not None
        self.outcome = RampOutcome(ramp)
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._created: list[VM] = []
        self._cancel = threading.Event()
        self._per_vm_mib: float | None = None
        self._peak_threads = 0

    # --- the ramp ------------------------------------------------------------------------

    def run(self) -> RampOutcome:
        previous_score = hm.set_oom_score_adj("self", HARNESS_OOM_SCORE) if self.host_metrics else None
        try:
            self._ramp()
        finally:
            self._cleanup()
            if previous_score is not None:
                hm.set_oom_score_adj("self", previous_score)
        return self.outcome

    def _ramp(self) -> None:
        if self.suite.primer:
            self._primer()
        running: list[VM] = []
        for index, target in enumerate(self.suite.steps(), start=1):
            projected = self._memory_projection(target - len(running))
            if projected is not None:
                self._stop(HOST_MEMORY, f"step {index}: {projected}", running)
                return
            stats, running = self._step(index, target, running)
            self.outcome.steps.append(stats)
            decision = decide(self.suite.stop_when, stats, self.suite.max_vms)
            if decision.stop:
                self._stop(decision.reason, decision.detail, running)
                return

    def _stop(self, reason: str, detail: str, running: Sequence[VM]) -> None:
        self.outcome.stop_reason, self.outcome.detail = reason, detail
        self.outcome.capacity_vms = capacity(self.suite.stop_when, self.outcome.steps)
        labels = {"ramp": self.ramp, "reason": reason, "detail": detail[:200]}
        self.record(dm.STOP_REASON, len(running), "count", **labels)
        self.record(dm.CAPACITY_VMS, self.outcome.capacity_vms, "count", ramp=self.ramp, reason=reason)
        self.log(f"ramp {self.ramp}: stop ({reason}: {detail}); capacity {self.outcome.capacity_vms} guests")

    def _primer(self) -> None:
        """Boot and discard one guest so the first step does not pay for cold caches."""
        boot = self._boot(f"{self.prefix}-r{self.ramp}-primer")
        if boot.vm is not None:
            self._delete(boot.vm)
        if boot.time_to_ssh_s is not None:
            self.outcome.primer_time_to_ssh_s = boot.time_to_ssh_s
            self.record(dm.PRIMER_TIME_TO_SSH_S, boot.time_to_ssh_s, "s", ramp=self.ramp)
        self.log(f"ramp {self.ramp}: primer {boot.time_to_ssh_s or boot.error}")

    def _step(self, index: int, target: int, earlier: list[VM]) -> tuple[StepStats, list[VM]]:
        labels = {"ramp": self.ramp, "step": index, "vms_running": target}
        new = target - len(earlier)
        self.log(f"ramp {self.ramp} step {index}: +{new} guests ({self.suite.mode}) -> {target}")
        oom_before = self._oom_kills()
        start = hm.cpu_snapshot()
        boots = self._boot_many(new)
        booted = hm.cpu_snapshot()
        boot_cpu = hm.cpu_usage(start, booted)
        times: list[float] = []
        for boot in boots:
            if boot.time_to_ssh_s is not None:
                times.append(boot.time_to_ssh_s)
                self.record(dm.TIME_TO_SSH_S, boot.time_to_ssh_s, "s", vm=boot.name, **labels)
            else:
                self.record(dm.BOOT_FAILED, 1, "count", vm=boot.name, reason=(boot.error or "")[:200], **labels)
        lost = self._lost(earlier)
        for vm in lost:
            self._delete(vm)
        for boot in boots:
            if boot.time_to_ssh_s is None and boot.vm is not None:
                self._delete(boot.vm)
        lost_ids = {id(vm) for vm in lost}
        running = [vm for vm in earlier if id(vm) not in lost_ids]
        running += [b.vm for b in boots if b.vm is not None and b.time_to_ssh_s is not None]
        self.record(dm.VMS_RUNNING, len(running), "count", **labels)
        self.record(dm.LOST_VMS, len(lost), "count", lost=",".join(v.name for v in lost)[:200], **labels)
        fresh = [b.vm for b in boots if b.vm is not None and b.time_to_ssh_s is not None]
        self._overhead(fresh[: self.suite.overhead_samples], labels)
        mem = hm.host_memory()
        self.record(dm.HOST_MEMORY_FRACTION, mem.used_fraction, "fraction", **labels)
        self.record(dm.HOST_CPU_FRACTION, boot_cpu.host_busy_fraction, "fraction", phase="boot", **labels)
        idle_cpu = self._settle(running, labels)
        whole = hm.cpu_usage(start, hm.cpu_snapshot())
        self.record(dm.HARNESS_CPU_FRACTION, whole.harness_fraction, "fraction", **labels)
        self.record(dm.HARNESS_CPU_SHARE, whole.harness_share_of_busy, "fraction", **labels)
        self.record(dm.HARNESS_THREADS, self._peak_threads, "count", **labels)  # peak while booting
        self._peak_threads = 0
        self.record(dm.HOST_LOAD1, os.getloadavg()[0], "load", **labels)
        stats = StepStats(
            index,
            target,
            len(running),
            tuple(times),
            sum(1 for b in boots if b.time_to_ssh_s is None),
            len(lost),
            mem.used_fraction,
            boot_cpu.host_busy_fraction,
            idle_cpu,
            whole.harness_fraction,
            max(self._oom_kills() - oom_before, 0),
            any(b.out_of_memory for b in boots),
        )
        p95 = stats.value("p95_time_to_ssh_s")
        self.log(
            f"ramp {self.ramp} step {index}: {len(running)} running, p95 {p95:.1f} s, failed {stats.failed_boots}, "
            f"lost {len(lost)}, mem {mem.used_fraction:.2f}, cpu boot {boot_cpu.host_busy_fraction:.2f} "
            f"idle {idle_cpu:.2f}, harness {whole.harness_fraction:.3f}"
        )
        return stats, running

    # --- booting -------------------------------------------------------------------------

    def _boot_many(self, count: int) -> list[Boot]:
        """Boot ``count`` guests: all at once (storm) or ``qps`` creates per second (rate)."""
        if count <= 0:
            return []
        names = [f"{self.prefix}-r{self.ramp}-{next(self._names)}" for _ in range(count)]
        pool = ThreadPoolExecutor(max_workers=min(count, 64), thread_name_prefix="density-boot")
        futures: list[Future[Boot]] = []
        try:
            for i, name in enumerate(names):
                if self.suite.mode == "rate" and i and self.suite.qps:
                    time.sleep(1 / self.suite.qps)
                futures.append(pool.submit(self._boot, name))
            pending = set(futures)
            while pending:  # short waits keep the main thread responsive to Ctrl-C
                self._peak_threads = max(self._peak_threads, hm.process_threads("self"))
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            return [f.result() for f in futures]
        except BaseException:
            self._cancel.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _boot(self, name: str) -> Boot:
        """Create one guest and wait for its SSH banner; never raises for a guest that fails."""
        if self._cancel.is_set():
            return Boot(name, None, None, "cancelled")
        spec = VMSpec(
            name=name,
            image=self.guest.image,
            cpus=self.guest.cpus,
            memory_mib=self.memory_mib,
            node=self.node,
            scratch_disk_mib=0,
        )
        try:
            vm = self.platform.create_vm(spec)
        except (PlatformError, OSError) as exc:
            return Boot(name, None, None, str(exc), _is_memory_error(exc))
        with self._lock:
            self._created.append(vm)
            self.outcome.created += 1
        if self.processes is not None:
            pid = self.processes.host_pid(vm)
            if pid is not None:
                hm.set_oom_score_adj(pid, GUEST_OOM_SCORE)
        created = vm.timeline.get("created")
        started = created.timestamp if created else time.time()
        vm_alive: Callable[[], bool] = vm.alive
        try:
            ready = wait_for_banner(
                vm.ssh_endpoint(),
                max(1.0, started + self.suite.timeout_s - time.time()),
                alive=lambda: not self._cancel.is_set() and vm_alive(),
            )
        except GuestUnreachable as exc:
            return Boot(name, vm, None, str(exc), "out of memory" in vm.console_tail(20).lower())
        return Boot(name, vm, ready - started)

    # --- checks --------------------------------------------------------------------------

    def _lost(self, vms: Sequence[VM]) -> list[VM]:
        """The guests among ``vms`` that no longer answer (HTTP /name with their name, or SSH)."""
        if not vms:
            return []
        with ThreadPoolExecutor(max_workers=min(len(vms), 16), thread_name_prefix="density-check") as pool:
            try:
                answers = list(pool.map(self._answers, vms))
            except BaseException:
                self._cancel.set()  # an interrupt: let the checks end now, not at their timeouts
                raise
        return [vm for vm, ok in zip(vms, answers, strict=True) if not ok]

    def _answers(self, vm: VM) -> bool:
        timeout = self.suite.liveness_timeout_s
        if self.suite.liveness == "ssh":
            try:
                wait_for_banner(vm.ssh_endpoint(), timeout, alive=vm.alive)
            except GuestUnreachable:
                return False
            return True
        endpoint = vm.http_endpoint()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._cancel.is_set():
            conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=max(1.0, timeout / 4))
            try:
                conn.request("GET", "/name")
                response = conn.getresponse()
                if response.status == 200 and response.read().decode(errors="replace").strip() == vm.name:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(0.5)
        return False

    def _overhead(self, vms: Sequence[VM], labels: dict[str, Any]) -> None:
        """Per-VM host memory beyond the guest's own use, for a few of the step's guests."""
        if self.processes is None or self.access is None:
            return
        for vm in vms:
            pid = self.processes.host_pid(vm)
            if pid is None:
                continue
            try:
                guest = self._guest_meminfo(vm)
                qemu = hm.process_memory(pid)
            except (GuestUnreachable, HostKeyMismatch, hm.MetricUnavailable, ValueError) as exc:
                self.log(f"overhead of {vm.name} not measured: {exc}")
                continue
            # What the guest uses, as it sees it: its RAM except what it reports free (kernel
            # reservations count as used, so the overhead is a lower bound).
            guest_used = self.memory_mib - guest.free_kib / 1024
            self.record(dm.GUEST_USED_MIB, guest_used, "MiB", vm=vm.name, **labels)
            self.record(dm.VM_OVERHEAD_MIB, qemu.rss_mib - guest_used, "MiB", vm=vm.name, **labels)
            self.record(
                dm.VM_OVERHEAD_PRIVATE_MIB, qemu.private_mib - guest_used, "MiB", vm=vm.name, **labels
            )

    def _guest_meminfo(self, vm: VM) -> hm.MemInfo:
        """The guest's own /proc/meminfo over SSH (host key pinned by the platform's image)."""
        assert self.access is not None
        try:
            with GuestSession(vm.ssh_endpoint(), self.access, timeout=self.suite.liveness_timeout_s) as session:
                return hm.parse_meminfo(session.run("cat /proc/meminfo", check=True).stdout)
        except HostKeyMismatch:
            # The image was rebuilt since the ramp began (new guests boot the newest build, whose
            # key the platform pins too): take the platform's current pin, once, and retry.
            fresh = self.platform.guest_access(vm.spec.image)
            if fresh == self.access:
                raise
            self.log(f"{vm.name}: the {vm.spec.image} image was rebuilt during the ramp; using its new pinned key")
            self.access = fresh
            with GuestSession(vm.ssh_endpoint(), self.access, timeout=self.suite.liveness_timeout_s) as session:
                return hm.parse_meminfo(session.run("cat /proc/meminfo", check=True).stdout)

    def _settle(self, running: Sequence[VM], labels: dict[str, Any]) -> float:
        """Measure the idle cost of ``running`` over ``settle_s``; returns host busy fraction."""
        pids = self._pids(running)
        before = hm.cpu_snapshot()
        vm_before = self._cpu_seconds(pids)
        self._sleep(self.suite.settle_s)
        after = hm.cpu_snapshot()
        usage = hm.cpu_usage(before, after)
        if self.suite.settle_s > 0:
            self.record(dm.IDLE_HOST_CPU_FRACTION, usage.host_busy_fraction, "fraction", **labels)
        if pids:
            vm_after = self._cpu_seconds(pids)
            spent = [vm_after[p] - vm_before[p] for p in pids if p in vm_before and p in vm_after]
            if spent and usage.wall_s > 0 and self.suite.settle_s > 0:
                self.record(dm.IDLE_VM_CPU_FRACTION, statistics.mean(spent) / usage.wall_s, "cores", **labels)
            rss = []
            for pid in pids:
                try:
                    rss.append(hm.process_memory(pid))
                except hm.MetricUnavailable:
                    continue
            if rss:
                self.record(dm.QEMU_RSS_MIB, statistics.mean(m.rss_mib for m in rss), "MiB", **labels)
                self._per_vm_mib = statistics.mean(m.private_mib for m in rss)
        return usage.host_busy_fraction

    def _memory_projection(self, new_vms: int) -> str | None:
        """Why the next step would take host memory above the limit, or None if it fits."""
        if not self.host_metrics or new_vms <= 0:
            return None
        mem = hm.host_memory()
        per_vm = self._per_vm_mib if self._per_vm_mib is not None else self.memory_mib + UNKNOWN_VM_MIB
        projected = projected_memory_fraction(mem.used_kib, mem.total_kib, new_vms, per_vm)
        limit = self.suite.memory_fraction_limit()
        if projected <= limit:
            return None
        return (
            f"{new_vms} more guests of ~{per_vm:.0f} MiB would take host memory to {projected:.2f} "
            f"(limit {limit:.2f}; now {mem.used_fraction:.2f})"
        )

    # --- helpers -------------------------------------------------------------------------

    def _pids(self, vms: Sequence[VM]) -> list[int]:
        if self.processes is None:
            return []
        return [p for vm in vms if (p := self.processes.host_pid(vm)) is not None]

    @staticmethod
    def _cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
        out = {}
        for pid in pids:
            try:
                out[pid] = hm.process_cpu_seconds(pid)
            except hm.MetricUnavailable:
                continue
        return out

    def _oom_kills(self) -> int:
        try:
            return hm.oom_kills() if self.host_metrics else 0
        except hm.MetricUnavailable:
            return 0

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))

    def _delete(self, vm: VM) -> None:
        with self._lock:
            index = next((i for i, v in enumerate(self._created) if v is vm), None)
            if index is None:
                return
            del self._created[index]
        try:
            self.platform.delete_vm(vm)
        finally:
            with self._lock:
                self.outcome.deleted += 1

    def _cleanup(self) -> None:
        """Delete every guest this ramp created, in parallel; also after an interrupt."""
        self._cancel.set()
        with self._lock:
            vms = list(self._created)
        if vms:
            self.log(f"ramp {self.ramp}: deleting {len(vms)} guests")
            with ThreadPoolExecutor(max_workers=min(len(vms), 16), thread_name_prefix="density-delete") as pool:
                list(pool.map(self._delete, vms))


def ramp_summary(outcome: RampOutcome) -> str:
    """One line per step for logs and the benchmark."""
    lines = []
    for s in outcome.steps:
        p50, p95 = s.value("p50_time_to_ssh_s"), s.value("p95_time_to_ssh_s")
        lines.append(
            f"step {s.step:>2}: {s.vms_running:>3} running  p50 {p50:6.1f} s  p95 {p95:6.1f} s  "
            f"failed {s.failed_boots}  lost {s.lost_vms}  mem {s.host_memory_fraction:.2f}  "
            f"cpu {s.host_cpu_fraction:.2f}/{s.idle_host_cpu_fraction:.2f}  harness {s.harness_cpu_fraction:.3f}"
        )
    lines.append(f"stop: {outcome.stop_reason} ({outcome.detail}); capacity {outcome.capacity_vms}")
    return "\n".join(lines)
