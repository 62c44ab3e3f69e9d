"""Live migrations as virt-launcher's migration monitor drives them, on the qemu lab's migrator.

The mechanics (a destination qemu on the target node with ``-incoming defer``, capabilities,
``migrate``, the switch-over, failure and cancel handling) are the qemu lab's
(``virtproof.lab.qemu.migration.Migrator``). What KubeVirt adds is *policy*, followed here from
v1.9.0 ``pkg/virt-launcher/virtwrap/live-migration-source.go`` with the MigrationStallDetection
gate off (it is Alpha, so ``handleLegacyConvergence`` is the path a default install takes):

- ``options`` come from the VMI's ``migrationState.migrationConfiguration`` (virt-handler
  ``migration-source.go`` ``migrateVMI``): bandwidthPerMigration (``vcpu.QuantityToMebiByte``:
  0 is unlimited, below 1 MiB is 1, else rounded to MiB/s), completionTimeoutPerGiB,
  progressTimeout, allowAutoConverge, allowPostCopy, allowWorkloadDisruption (defaults to
  allowPostCopy when unset).
- ``acceptableCompletionTime`` = completionTimeoutPerGiB x the VMI's memory in GB rounded up
  (``manager.go`` ``getVMIMigrationDataSize``: guest memory, else the memory request;
  ``ScaledValue(resource.Giga)``).
- Every 400 ms (``monitorSleepPeriodMS``): in post-copy nothing more is done; past the
  acceptable time with workload disruption allowed the monitor starts post-copy (allowPostCopy)
  or pauses the guest (mode Paused) and doubles the acceptable time; a migration whose remaining
  data has not shrunk for progressTimeout seconds, or that is past the acceptable time, is
  cancelled ("Live migration has been aborted", abortStatus Succeeded; ``cancelMigration``,
  ``setMigrationResult``). Post-copy therefore happens only after completionTimeoutPerGiB, never
  after the first RAM pass as the qemu lab's own post-copy policy does.
- An abort (the VMIM deleted while Running: virt-controller sets ``abortRequested``) cancels the
  qemu migration, except in post-copy, where libvirt refuses (abortStatus Failed).

Simplifications: libvirt's unlimited bandwidth is passed as 1 TiB/s; the downtime limit stays
qemu's default (300 ms), as libvirt leaves it on this path; allowAutoConverge together with
allowPostCopy gets post-copy only (the lab's migrator sets one of the two capabilities); block
migration's ephemeral disks are not added to the data size (the lab's disks are shared files).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from virtproof.lab.platform import MigrationMode, MigrationPolicy
from virtproof.lab.qemu.migration import Migrator
from virtproof.lab.qemu.qmp import QMPFailure

if TYPE_CHECKING:
    from virtproof.lab.qemu.migration import _InFlight, _Outcome
    from virtproof.lab.qemu.platform import QemuPlatform
    from virtproof.lab.qemu.process import QemuProcess

log = logging.getLogger("virtproof.lab.simnodes")

MIB = 1024 * 1024
MONITOR_PERIOD_S = 0.4  # monitorSleepPeriodMS
UNLIMITED_MIBPS = 1 << 20
ABORTED = "Live migration has been aborted"
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
          "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": 1e-3, "": 1}


def quantity_bytes(text: object) -> float:
    """A resource.Quantity ("256Mi", "1G", "0", "1.5Gi", "1e3") in base units."""
    match = re.fullmatch(r"\s*([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTPE]i|[kMGTPEm])?\s*", str(text))
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def quantity_to_mebibytes(text: object) -> int:
    """``vcpu.QuantityToMebiByte``."""
    value = quantity_bytes(text)
    if value == 0:
        return 0
    if value < MIB:
        return 1
    return int(value / MIB + 0.5)


@dataclass(frozen=True)
class LauncherOptions:
    """``cmdclient.MigrationOptions`` as virt-handler fills them."""

    bandwidth_mibps: int = 0
    completion_timeout_per_gib: int = 150
    progress_timeout: int = 150
    allow_auto_converge: bool = False
    allow_post_copy: bool = False
    allow_workload_disruption: bool = False
    data_size_gb: int = 1

    @property
    def acceptable_completion_s(self) -> int:
        return self.completion_timeout_per_gib * self.data_size_gb

    @classmethod
    def from_vmi(cls, vmi: dict[str, Any]) -> LauncherOptions:
        state = ((vmi.get("status") or {}).get("migrationState")) or {}
        conf = state.get("migrationConfiguration") or {}
        post_copy = bool(conf.get("allowPostCopy", False))
        disruption = conf.get("allowWorkloadDisruption")
        return cls(
            bandwidth_mibps=quantity_to_mebibytes(conf.get("bandwidthPerMigration", "0Mi")),
            completion_timeout_per_gib=int(conf.get("completionTimeoutPerGiB", 150)),
            progress_timeout=int(conf.get("progressTimeout", 150)),
            allow_auto_converge=bool(conf.get("allowAutoConverge", False)),
            allow_post_copy=post_copy,
            allow_workload_disruption=post_copy if disruption is None else bool(disruption),
            data_size_gb=migration_data_size_gb(vmi),
        )

    def policy(self) -> MigrationPolicy:
        """The qemu lab policy: capabilities and bandwidth; the monitor owns every timeout."""
        mode: MigrationMode = (
            "postcopy" if self.allow_post_copy else "auto_converge" if self.allow_auto_converge else "precopy"
        )
        bound = max(self.acceptable_completion_s * 4, self.progress_timeout * 2) + 120
        return MigrationPolicy(mode=mode, bandwidth_mibps=self.bandwidth_mibps or UNLIMITED_MIBPS,
                               timeout_s=float(min(bound, 24 * 3600)))


def migration_data_size_gb(vmi: dict[str, Any]) -> int:
    domain = ((vmi.get("spec") or {}).get("domain")) or {}
    memory = ((domain.get("resources") or {}).get("requests") or {}).get("memory")
    guest = (domain.get("memory") or {}).get("guest")
    value = quantity_bytes(guest or memory or 0)
    return math.ceil(value / 1e9)


@dataclass
class MonitorState:
    """What the migration monitor decided and saw; read by the handler to report it."""

    options: LauncherOptions
    on_change: Callable[[], None]
    mode: str = "PreCopy"
    started: float = field(default_factory=time.time)
    domain_detected: bool = False
    abort_status: str = ""  # InProgress, Succeeded, Failed
    cancelled_by_monitor: bool = False
    abort_requested: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class LauncherMigrator(Migrator):
    """The qemu lab's migrator with virt-launcher's monitor deciding post-copy, pause and cancel.

    It hooks the lab migrator's ``_watch`` step (the destination is up and ``migrate`` was
    issued): it starts the monitor beside it and hands ``_watch`` a pre-copy policy, so the lab's
    own "post-copy after the first RAM pass" rule never fires; the capabilities were set from the
    real policy before (``postcopy-ram`` when allowPostCopy)."""

    def __init__(self, platform: QemuPlatform) -> None:
        super().__init__(platform)
        self.monitors: dict[str, MonitorState] = {}
        self._monitor_lock = threading.Lock()

    def register(self, vm_name: str, state: MonitorState) -> None:
        with self._monitor_lock:
            self.monitors[vm_name] = state

    def unregister(self, vm_name: str) -> None:
        with self._monitor_lock:
            self.monitors.pop(vm_name, None)

    def _watch(self, flight: _InFlight, destination: QemuProcess, policy: MigrationPolicy,
               deadline: float) -> _Outcome:
        with self._monitor_lock:
            state = self.monitors.get(flight.vm.name)
        if state is None:
            return super()._watch(flight, destination, policy, deadline)
        state.domain_detected = True  # the target's domain exists (waiting for the stream)
        state.on_change()
        thread = threading.Thread(target=_monitor, args=(state, flight.source, destination),
                                  name=f"monitor-{flight.vm.name}", daemon=True)
        thread.start()
        try:
            return super()._watch(flight, destination, replace(policy, mode="precopy"), deadline)
        finally:
            state.done.set()
            thread.join(5)


def _cancel(state: MonitorState, source: QemuProcess, why: str) -> None:
    if state.abort_status in ("InProgress", "Succeeded"):
        return
    if state.mode == "PostCopy":
        state.abort_status = "Failed"  # libvirt cannot abort a migration in post-copy
        log.info("cancel refused in post-copy (%s)", why)
        state.on_change()
        return
    state.abort_status = "InProgress"
    log.info("cancelling the migration: %s", why)
    try:
        source.qmp.execute("migrate_cancel", timeout=10)
        state.abort_status = "Succeeded"
    except QMPFailure as exc:
        log.info("migrate_cancel: %s", exc)
        state.abort_status = "Failed"
    state.on_change()


def _monitor(state: MonitorState, source: QemuProcess, destination: QemuProcess) -> None:
    """handleLegacyConvergence, every 400 ms, until the lab migrator's watch ends."""
    options = state.options
    acceptable = options.acceptable_completion_s
    start = time.monotonic()
    last_progress = start
    watermark = 0
    resumed_destination = False
    while not state.done.wait(MONITOR_PERIOD_S):
        now = time.monotonic()
        try:
            info = source.qmp.execute("query-migrate", timeout=5) or {}
        except QMPFailure:
            continue
        status = str(info.get("status", ""))
        if status == "active":
            remaining = int((info.get("ram") or {}).get("remaining", 0))
            if watermark == 0 or remaining < watermark:
                last_progress = now
            watermark = remaining
        if state.abort_requested.is_set():
            _cancel(state, source, "abort requested")
        if status == "completed" and state.mode == "Paused" and not resumed_destination:
            # libvirt resumes the destination of a migration the monitor paused
            try:
                if destination.qmp.execute("query-status", timeout=5).get("status") == "paused":
                    destination.qmp.execute("cont", timeout=5)
                    resumed_destination = True
            except QMPFailure as exc:
                log.info("resuming the destination: %s", exc)
            continue
        if status not in ("active", "postcopy-active", "setup", "device"):
            continue
        elapsed = int(now - start)
        timed_out = acceptable != 0 and elapsed > acceptable
        if state.mode == "PostCopy":
            continue
        if options.allow_workload_disruption and timed_out and state.mode != "Paused":
            if options.allow_post_copy:
                try:
                    source.qmp.execute("migrate-start-postcopy", timeout=5)
                    state.mode = "PostCopy"
                    log.info("starting post-copy after %d s (acceptable %d s)", elapsed, acceptable)
                except QMPFailure as exc:
                    log.info("migrate-start-postcopy: %s", exc)
            else:
                try:
                    source.qmp.execute("stop", timeout=5)
                    state.mode = "Paused"
                    acceptable *= 2
                    log.info("pausing the guest to let the migration complete")
                except QMPFailure as exc:
                    log.info("pausing the guest: %s", exc)
            state.on_change()
        elif options.progress_timeout and now - last_progress > options.progress_timeout:
            state.cancelled_by_monitor = True
            _cancel(state, source, f"stuck for {int(now - last_progress)} s")
        elif timed_out:
            state.cancelled_by_monitor = True
            _cancel(state, source, f"not completed after {acceptable} s")
