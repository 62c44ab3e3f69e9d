"""What virt-handler writes into a VMI, as pure functions of the VMI and of what the node saw.

Followed from KubeVirt v1.9.0:

- ``pkg/virt-handler/vm.go`` ``updateVMIStatus``: ``updateVMIStatusFromDomain`` (selinuxContext
  "none" without SELinux, ``updateGuestInfoFromDomain`` (nothing without a guest agent, so
  ``guestOSInfo`` stays ``{}``), ``updateMachineType``, ``updateMemoryInfo`` (guestCurrent from
  the domain), ``netStat.UpdateStatus``), the phase from ``calculateVmPhaseForStatusReason`` and
  ``controller.SetVMIPhaseTransitionTimestamp`` (``pkg/controller/controller.go``: one entry per
  phase, stamped ``metav1.Now()``), then one ``Update`` of the whole VMI (VMIs have no status
  subresource) only if the status changed.
- ``updateLiveMigrationConditions`` / ``calculateLiveMigrationCondition`` /
  ``calculateLiveStorageMigrationCondition`` / ``checkVolumesForMigration``: LiveMigratable and
  StorageLiveMigratable carry no times; a PVC or DataVolume that is not ReadWriteMany makes the
  VMI non-migratable (DisksNotMigratable), and any volume that is neither shared nor a
  read-only CD-ROM (containerDisk, cloud-init, emptyDisk...) makes it a BlockMigration.
  ``pkg/network/vmispec/interface.go`` ``VerifyVMIMigratable``: the pod-network interface must
  use masquerade or passt, or bridge with the allow-pod-bridge-network-live-migration annotation.
- ``pkg/network/setup/netstat.go`` ``UpdateStatus``: without a guest agent each interface is
  reported from the domain (name, MAC, infoSource "domain", queueCount 1, linkState "up") with
  the IPs of the pod interface cache; podInterfaceName is restored from the earlier report.
  Here the IP is the guest's stable address on the lab's L2 segment.
- Migrations: ``migration-target.go`` ``updateStatus`` (targetNodeAddress and
  targetDirectMigrationNodePorts, targetNodeDomainDetected, targetNodeDomainReadyTimestamp and
  the MigrationRequired condition removed), ``ackMigrationCompletion``, ``finalizeMigration``
  (completed), ``finalCleanup`` (the migrationTargetNodeName label and, on success, the
  create-migration-target annotation go); ``migration-source.go`` ``setMigrationProgressStatus``
  (startTimestamp, mode; on failure failed, completed, endTimestamp, abortStatus, failureReason).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from virtproof.lab.simnodes.times import metav1_time

Obj = dict[str, Any]

NODE_NAME_LABEL = "kubevirt.io/nodeName"
MIGRATION_TARGET_LABEL = "kubevirt.io/migrationTargetNodeName"
OUTDATED_LAUNCHER_LABEL = "kubevirt.io/outdatedLauncherImage"
CREATE_MIGRATION_TARGET = "kubevirt.io/create-migration-target"
EVICTION_SOURCE = "kubevirt.io/eviction-source"
ALLOW_BRIDGE_MIGRATION = "kubevirt.io/allow-pod-bridge-network-live-migration"


@dataclass(frozen=True)
class DomainFacts:
    """What the node knows about the running domain (the guest)."""

    machine_type: str
    ip: str | None  # the interface's address
    mac: str | None
    memory: str | None = None  # the domain's current memory as a Quantity string


def set_phase(vmi: Obj, phase: str, now: float) -> None:
    """Set the phase and record its transition time once (SetVMIPhaseTransitionTimestamp)."""
    status = vmi.setdefault("status", {})
    if status.get("phase") == phase:
        return
    status["phase"] = phase
    stamps = status.setdefault("phaseTransitionTimestamps", [])
    if not any(s.get("phase") == phase for s in stamps):
        stamps.append({"phase": phase, "phaseTransitionTimestamp": metav1_time(now)})


def _shared(access_modes: list[str]) -> bool:
    return "ReadWriteMany" in access_modes  # storagetypes.HasSharedAccessMode


def _network_error(vmi: Obj) -> str | None:
    spec = vmi.get("spec") or {}
    interfaces = ((spec.get("domain") or {}).get("devices") or {}).get("interfaces") or []
    if not interfaces:
        return None
    pod_network = next((n for n in spec.get("networks") or [] if "pod" in n), None)
    if pod_network is None:
        return None
    primary = next((i for i in interfaces if i.get("name") == pod_network.get("name")), None)
    if primary is None:
        return f"no primary interface found for network {pod_network.get('name')}"
    if "masquerade" in primary or "passtBinding" in primary:
        return None
    if "bridge" in primary and ALLOW_BRIDGE_MIGRATION in ((vmi.get("metadata") or {}).get("annotations") or {}):
        return None
    return "cannot migrate VMI which does not use masquerade or a migratable plugin to connect to the pod network"


def _volumes_check(vmi: Obj) -> tuple[bool, str | None]:
    """(block migration, error) as ``checkVolumesForMigration`` decides them."""
    spec = vmi.get("spec") or {}
    status = vmi.get("status") or {}
    statuses = {v.get("name"): v for v in status.get("volumeStatus") or []}
    disks = {d.get("name"): d for d in ((spec.get("domain") or {}).get("devices") or {}).get("disks") or []}
    block = bool(status.get("migratedVolumes"))
    for volume in spec.get("volumes") or []:
        name = volume.get("name")
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName") or (volume.get("dataVolume") or {}).get(
            "name"
        )
        if claim is not None:
            info = (statuses.get(name) or {}).get("persistentVolumeClaimInfo")
            if not info:
                return True, (f"cannot migrate VMI: Unable to determine if PVC {claim} is shared, live migration "
                              "requires that all PVCs must be shared (using ReadWriteMany access mode)")
            if not _shared(info.get("accessModes") or []):
                return True, (f"cannot migrate VMI: PVC {claim} is not shared, live migration requires that all "
                              "PVCs must be shared (using ReadWriteMany access mode)")
            continue
        if "hostDisk" in volume:
            # HostDisk.shared: KubeVirt's boolean API field ("whether the path is shared between
            # nodes", v1.HostDisk in the bundled lab/kubevirt/schemas/kubevirt-v1.9.0-openapi.json.gz),
            # not a path: nothing here reads outside the repository
            if not (volume["hostDisk"] or {}).get("shared"):
                return True, "cannot migrate VMI with non-shared HostDisk"
            continue
        cdrom = (disks.get(name) or {}).get("cdrom")
        if cdrom is not None and cdrom.get("readonly", True):
            continue
        block = True
    return block, None


def migratable_conditions(vmi: Obj) -> tuple[list[Obj], str]:
    """[LiveMigratable, StorageLiveMigratable] and the migrationMethod."""
    block, volume_error = _volumes_check(vmi)
    net_error = _network_error(vmi)
    if net_error:
        live: Obj = {"type": "LiveMigratable", "status": "False", "reason": "InterfaceNotLiveMigratable",
                     "message": net_error}
    elif volume_error:
        live = {"type": "LiveMigratable", "status": "False", "reason": "DisksNotLiveMigratable",
                "message": volume_error}
    else:
        live = {"type": "LiveMigratable", "status": "True"}
    if net_error:
        storage: Obj = {"type": "StorageLiveMigratable", "status": "False", "reason": "NotMigratable",
                        "message": f"InterfaceNotLiveMigratable: {net_error}"}
    else:
        storage = {"type": "StorageLiveMigratable", "status": "True"}
    for cond in (live, storage):
        cond["lastProbeTime"] = None
        cond["lastTransitionTime"] = None
    return [live, storage], "BlockMigration" if block else "LiveMigration"


def _replace_condition(status: Obj, cond: Obj) -> None:
    conditions = status.setdefault("conditions", [])
    for i, existing in enumerate(conditions):
        if existing.get("type") == cond["type"]:
            if existing != cond:
                conditions[i] = cond
            return
    conditions.append(cond)


def _interfaces(vmi: Obj, facts: DomainFacts) -> list[Obj]:
    spec = vmi.get("spec") or {}
    previous = {i.get("name"): i for i in (vmi.get("status") or {}).get("interfaces") or []}
    out: list[Obj] = []
    for iface in ((spec.get("domain") or {}).get("devices") or {}).get("interfaces") or []:
        name = iface.get("name")
        entry: Obj = {"name": name, "infoSource": "domain", "queueCount": 1, "linkState": "up"}
        mac = iface.get("macAddress") or facts.mac
        if mac:
            entry["mac"] = mac
        if facts.ip and len(out) == 0:
            entry["ipAddress"] = facts.ip
            entry["ipAddresses"] = [facts.ip]
        pod_if = (previous.get(name) or {}).get("podInterfaceName")
        if pod_if:
            entry["podInterfaceName"] = pod_if
        out.append(entry)
    return out


def running_status(vmi: Obj, facts: DomainFacts, now: float) -> Obj:
    """A copy of ``vmi`` with what virt-handler reports once its domain runs."""
    new = copy.deepcopy(vmi)
    status = new.setdefault("status", {})
    status["selinuxContext"] = "none"
    status.setdefault("guestOSInfo", {})
    status["machine"] = {"type": facts.machine_type}
    if facts.memory:
        status.setdefault("memory", {})["guestCurrent"] = facts.memory
    interfaces = _interfaces(vmi, facts)
    if interfaces:
        status["interfaces"] = interfaces
    set_phase(new, "Running", now)
    conditions, method = migratable_conditions(new)
    for cond in conditions:
        _replace_condition(status, cond)
    status["migrationMethod"] = method
    return new


def final_status(vmi: Obj, phase: str, now: float) -> Obj:
    """A copy of ``vmi`` with the domain gone: Succeeded (shut down) or Failed (crashed)."""
    new = copy.deepcopy(vmi)
    set_phase(new, phase, now)
    return new


# --- migrations --------------------------------------------------------------------------


def migration_state(vmi: Obj) -> Obj:
    return ((vmi.get("status") or {}).get("migrationState")) or {}


def target_prepared(vmi: Obj, address: str, ports: dict[str, int]) -> Obj:
    """The target handler publishes where its migration listeners are."""
    new = copy.deepcopy(vmi)
    state = new["status"]["migrationState"]
    state["targetNodeAddress"] = address
    state["targetDirectMigrationNodePorts"] = ports
    if state.get("targetState") is not None:
        state["targetState"]["nodeAddress"] = address
        state["targetState"]["directMigrationNodePorts"] = ports
    return new


def source_progress(vmi: Obj, start: float, mode: str) -> Obj:
    """The source handler copies the launcher's migration metadata (start, mode)."""
    new = copy.deepcopy(vmi)
    state = new["status"]["migrationState"]
    state["startTimestamp"] = metav1_time(start)
    state["mode"] = mode
    return new


def target_domain_detected(vmi: Obj) -> Obj:
    new = copy.deepcopy(vmi)
    state = new["status"]["migrationState"]
    state["targetNodeDomainDetected"] = True
    if state.get("targetState") is not None:
        state["targetState"]["domainDetected"] = True
    return new


def target_ack(vmi: Obj, host: str, ready: float, start: float, end: float, mode: str) -> Obj:
    """The target sees its domain running and the migration ended: it takes the VMI over."""
    new = copy.deepcopy(vmi)
    status = new["status"]
    state = status["migrationState"]
    state["targetNodeDomainDetected"] = True
    state.setdefault("targetNodeDomainReadyTimestamp", metav1_time(ready))
    if state.get("targetState") is not None:
        state["targetState"]["domainDetected"] = True
        state["targetState"]["domainReadyTimestamp"] = state["targetNodeDomainReadyTimestamp"]
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != "MigrationRequired"]
    state.setdefault("startTimestamp", metav1_time(start))
    state["endTimestamp"] = metav1_time(end)
    state["mode"] = mode
    meta = new.setdefault("metadata", {})
    meta.setdefault("labels", {})[NODE_NAME_LABEL] = host
    meta["labels"].pop(OUTDATED_LAUNCHER_LABEL, None)
    (meta.get("annotations") or {}).pop(EVICTION_SOURCE, None)
    status.pop("launcherContainerImageVersion", None)
    status["nodeName"] = host
    status.pop("evacuationNodeName", None)
    status["migrationTransport"] = "Unix"
    if state.get("targetMemoryOverhead") is not None:
        status.setdefault("memory", {})["memoryOverhead"] = state["targetMemoryOverhead"]
    return new


def target_finalized(vmi: Obj) -> Obj:
    new = copy.deepcopy(vmi)
    new["status"]["migrationState"]["completed"] = True
    return new


def target_cleanup(vmi: Obj) -> Obj:
    new = copy.deepcopy(vmi)
    meta = new.setdefault("metadata", {})
    (meta.get("labels") or {}).pop(MIGRATION_TARGET_LABEL, None)
    if not migration_state(new).get("failed"):
        (meta.get("annotations") or {}).pop(CREATE_MIGRATION_TARGET, None)
    return new


def source_failed(vmi: Obj, start: float, end: float, mode: str, reason: str, abort_status: str) -> Obj:
    """The launcher reported the migration failed (or aborted); the source handler copies it."""
    new = copy.deepcopy(vmi)
    state = new["status"]["migrationState"]
    state.setdefault("startTimestamp", metav1_time(start))
    state["failed"] = True
    state["completed"] = True
    state["endTimestamp"] = metav1_time(end)
    state["failureReason"] = reason
    state["mode"] = mode
    if abort_status:
        state["abortStatus"] = abort_status
    return new
