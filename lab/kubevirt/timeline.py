"""Turn watch events into VM timelines: VMI phaseTransitionTimestamps, VMI conditions (Ready,
AgentConnected), VM printableStatus, and migrations (VMIM phases, VMI migrationState).

``Recorder`` is the informers' handler. It keeps one ``VMRecord`` per VM and wakes waiters.
Platform timestamps come from the objects; ``observed`` is when the harness saw each change.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from virtproof.instruments.latency import ORDER, PHASE_NAMES
from virtproof.lab.kubevirt.resources import VM_LABEL, Obj
from virtproof.lab.platform import START_EVENT, Timeline

# VMI phase -> timeline event name
TIMELINE_NAMES = {"Pending": "vmi_pending", "Scheduling": "vmi_scheduling", "Scheduled": "vmi_scheduled",
                  "Running": "running", "Succeeded": "vmi_succeeded", "Failed": "vmi_failed"}
MIGRATION_PHASES = ("Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running",
                    "Succeeded", "Failed")


def parse_time(value: Any) -> float | None:
    """RFC 3339 (seconds or sub-second precision) -> epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


@dataclass
class MigrationRecord:
    name: str
    vmi: str
    phases: dict[str, float] = field(default_factory=dict)
    phase: str = ""
    deleted: bool = False
    reason: str = ""  # why it failed: status.migrationState.failureReason, else a condition's message

    def update(self, status: Obj) -> None:
        """Take what a VirtualMachineInstanceMigration's ``status`` says: phases, phase, reason."""
        for item in status.get("phaseTransitionTimestamps") or []:
            ts = parse_time(item.get("phaseTransitionTimestamp"))
            if ts is not None and item.get("phase"):
                self.phases.setdefault(str(item["phase"]), ts)
        self.phase = str(status.get("phase") or self.phase)
        state = status.get("migrationState") or {}
        messages = [str(c.get("message") or c.get("reason") or "") for c in status.get("conditions") or []
                    if c.get("status") == "True"]
        self.reason = str(state.get("failureReason") or next((m for m in messages if m), self.reason))

    def failed_before_hand_off(self, what: str) -> str:
        """The error of a migration that Failed before the hand-off: the phase it had reached and why."""
        reached = [ph for ph in self.phases if ph != "Failed"]
        where = f" after phase {reached[-1]}" if reached else ""
        why = self.reason or "virt-controller gave no reason on the object (see its Events)"
        return f"{what} {self.name} Failed before the hand-off{where}: {why}"


@dataclass
class VMRecord:
    name: str
    timeline: Timeline
    vm_created: float | None = None
    vmi_created: float | None = None
    vmi_uid: str = ""
    phase: str = ""
    node: str = ""
    printable_status: str = ""
    phase_ts: dict[str, float] = field(default_factory=dict)  # kube-burner quantileName -> epoch s
    observed: dict[str, float] = field(default_factory=dict)
    migration_state: dict[str, Any] = field(default_factory=dict)
    ip_address: str = ""  # status.interfaces[0].ipAddress, as virt-handler reports it
    failure: str = ""
    vmi_deleted: bool = False

    def latencies_ms(self) -> dict[str, float]:
        """kube-burner phase -> ms since the VM's creationTimestamp (the VMI's for a bare VMI).

        Computed when asked: the VM and VMI informers deliver in any order. Only kube-burner's
        own quantile names (``instruments.latency.ORDER``) are published here: they become
        ``vmi_latency.<name>_ms`` samples, a namespace that means kube-burner's method."""
        base = self.vm_created if self.vm_created is not None else self.vmi_created
        if base is None:
            return {}
        return {name: round((ts - base) * 1000.0, 3) for name, ts in self.phase_ts.items() if name in ORDER}


class Recorder:
    """Handler for the VMI, VM and VMIM informers of one namespace."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.vms: dict[str, VMRecord] = {}
        self.migrations: dict[str, MigrationRecord] = {}
        self.processing_s = 0.0  # total time spent in handlers (for the benchmark)
        self.handled = 0
        self.delays: list[float] = []  # event received -> recorded, seconds (bounded)

    def track(self, name: str, timeline: Timeline) -> VMRecord:
        with self.cond:
            record = self.vms.get(name)
            if record is None:
                record = VMRecord(name, timeline)
                self.vms[name] = record
            else:
                record.timeline = timeline
            return record

    def forget(self, name: str) -> None:
        with self.cond:
            self.vms.pop(name, None)

    def _add(self, record: VMRecord, name: str, ts: float, now: float, source: str = "platform") -> None:
        """A platform time (metav1.Time: the cluster's clock, whole seconds) and, as its own
        series, ``<name>_observed``: when this harness received the watch event (local clock),
        as kube-burner keeps what it observed apart from what the objects say."""
        if record.timeline.get(name) is not None:
            return
        if source == "platform":
            record.timeline.add(name, ts, "platform", clock="cluster", resolution_s=1.0)
            record.timeline.add(f"{name}_observed", now, "harness")
        else:
            record.timeline.add(name, now, "harness")
        record.observed[name] = now

    def _record_for(self, obj: Obj) -> VMRecord | None:
        meta = obj.get("metadata") or {}
        name = (meta.get("labels") or {}).get(VM_LABEL) or meta.get("name")
        return self.vms.get(str(name)) if name else None

    # handlers ---------------------------------------------------------------------------
    def on_vmi(self, kind: str, obj: Obj, received: float) -> None:
        start = time.perf_counter()
        with self.cond:
            record = self._record_for(obj)
            if record is not None:
                self._vmi(record, kind, obj, received)
                self.cond.notify_all()
        self._account(start, received)

    def _vmi(self, record: VMRecord, kind: str, obj: Obj, received: float) -> None:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        uid = str(meta.get("uid") or "")
        if kind == "DELETED":
            if uid == record.vmi_uid:
                record.vmi_deleted = True
            return
        if uid and uid != record.vmi_uid:
            record.vmi_uid, record.vmi_deleted = uid, False
        created = parse_time(meta.get("creationTimestamp"))
        if created is not None and record.vmi_created is None:
            record.vmi_created = created
            self._add(record, "vmi_created", created, received)
            self._latency(record, "VMICreated", created)
        for item in status.get("phaseTransitionTimestamps") or []:
            phase, ts = item.get("phase"), parse_time(item.get("phaseTransitionTimestamp"))
            if ts is None or phase not in TIMELINE_NAMES:
                continue
            self._add(record, TIMELINE_NAMES[phase], ts, received)
            if phase in PHASE_NAMES:
                self._latency(record, PHASE_NAMES[phase], ts)
        record.phase = str(status.get("phase") or record.phase)
        record.node = str(status.get("nodeName") or record.node)
        interfaces = status.get("interfaces") or []
        if interfaces and interfaces[0].get("ipAddress"):
            record.ip_address = str(interfaces[0]["ipAddress"])
        for condition in status.get("conditions") or []:
            if condition.get("status") != "True":
                continue
            ts = parse_time(condition.get("lastTransitionTime")) or received
            if condition.get("type") == "Ready":
                # Our own measure, in the timeline only (``vmi_ready`` on the cluster's clock and
                # ``vmi_ready_observed``): kube-burner's VMIReady is the time *it* saw the
                # condition (time.Now() in handleUpdateVMI, pkg/measurements/vmi_latency.go), not
                # its lastTransitionTime, so this is never published under that name.
                self._add(record, "vmi_ready", ts, received)
            elif condition.get("type") == "AgentConnected":
                self._add(record, "agent_connected", ts, received)
        if record.phase == "Failed":
            record.failure = str(status.get("reason") or "VMI failed")
        state = status.get("migrationState")
        if isinstance(state, dict):
            record.migration_state = state

    def _latency(self, record: VMRecord, name: str, ts: float) -> None:
        record.phase_ts.setdefault(name, ts)

    def on_vm(self, kind: str, obj: Obj, received: float) -> None:
        start = time.perf_counter()
        with self.cond:
            record = self._record_for(obj)
            if record is not None and kind != "DELETED":
                meta, status = obj.get("metadata") or {}, obj.get("status") or {}
                created = parse_time(meta.get("creationTimestamp"))
                if created is not None and record.vm_created is None:
                    record.vm_created = created
                    self._add(record, "vm_created", created, received)
                    # the start of every cluster-clock span of this VM
                    record.timeline.add(START_EVENT["cluster"], created, "platform", clock="cluster", resolution_s=1.0)
                printable = str(status.get("printableStatus") or "")
                if printable and printable != record.printable_status:
                    record.printable_status = printable
                    self._add(record, f"vm_{printable.lower()}", received, received, source="harness")
                if status.get("ready") is True:
                    stamped = None
                    for condition in status.get("conditions") or []:
                        if condition.get("type") == "Ready" and condition.get("status") == "True":
                            stamped = parse_time(condition.get("lastTransitionTime"))
                    if stamped is not None:
                        self._add(record, "vm_ready", stamped, received)
                    else:
                        self._add(record, "vm_ready", received, received, source="harness")
                    # kube-burner's VMReady is when *it* saw the VM Ready (time.Now() in its
                    # handleUpdateVM), minus the VM's creationTimestamp: the same here.
                    self._latency(record, "VMReady", received)
                self.cond.notify_all()
        self._account(start, received)

    def on_migration(self, kind: str, obj: Obj, received: float) -> None:
        start = time.perf_counter()
        with self.cond:
            meta, status = obj.get("metadata") or {}, obj.get("status") or {}
            name = str(meta.get("name"))
            record = self.migrations.get(name)
            if record is None:
                record = MigrationRecord(name, str((obj.get("spec") or {}).get("vmiName") or ""))
                self.migrations[name] = record
            if kind == "DELETED":
                record.deleted = True
            record.update(status)
            self.cond.notify_all()
        self._account(start, received)

    def _account(self, start: float, received: float) -> None:
        end = time.perf_counter()
        self.processing_s += end - start
        self.handled += 1
        if len(self.delays) < 200_000:
            self.delays.append(time.time() - received)

    # waiting ----------------------------------------------------------------------------
    def wait_for(self, predicate: Any, timeout: float) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(predicate, timeout))
