"""Node heartbeats: the kubelet's node conditions and Lease, and virt-handler's node patch (pure).

Followed from:

- Kubernetes v1.34.4 ``pkg/kubelet/nodestatus/setters.go``: ``ReadyCondition`` (True, reason
  KubeletReady, "kubelet is posting ready status"; NodeReady stays last), the
  ``MemoryPressureCondition``/``DiskPressureCondition``/``PIDPressureCondition`` setters
  (False, KubeletHasSufficientMemory / KubeletHasNoDiskPressure / KubeletHasSufficientPID).
  Each carries lastHeartbeatTime = now; lastTransitionTime changes only with the status.
  ``kubelet_node_status.go``: the status is patched when something other than heartbeat times
  changed (``nodeStatusHasChanged``) or ``nodeStatusReportFrequency`` (5 min by default, with
  the lease) has passed, the first delay jittered by ±50 % (``calculateDelay``).
- ``k8s.io/component-helpers/apimachinery/lease/controller.go``: the node Lease in
  kube-node-lease (holderIdentity = node name, leaseDurationSeconds 40, renewTime a MicroTime),
  renewed every 0.25 x 40 s = 10 s (kubelet.go ``nodeLeaseRenewIntervalFraction``), updated from
  the last written copy, created if missing; ``pkg/kubelet/util/nodelease.go``
  ``SetNodeOwnerFunc`` sets an ownerReference to the Node.
- KubeVirt v1.9.0 ``pkg/virt-handler/heartbeat/heartbeat.go`` ``do``: a strategic merge patch
  of the Node's labels ``kubevirt.io/schedulable`` ("true" once the device plugins are up),
  ``cpumanager`` and ``kubevirt.io/cpumanager`` ("false" without the static CPU manager) and the
  annotation ``kubevirt.io/heartbeat`` (metav1.Now()), every minute with jitter 1.2;
  ``labelNodeUnschedulable`` writes schedulable "false" when virt-handler stops.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from virtproof.lab.simnodes.times import metav1_time, micro_time

Obj = dict[str, Any]

LEASE_DURATION_S = 40
LEASE_RENEW_S = LEASE_DURATION_S * 0.25
NODE_STATUS_REPORT_S = 300.0
HEARTBEAT_S = 60.0
HEARTBEAT_JITTER = 1.2
DEVICE_PLUGINS = ("devices.kubevirt.io/kvm", "devices.kubevirt.io/tun", "devices.kubevirt.io/vhost-net")
MAX_DEVICES = "1k"  # virt-handler --max-devices default 1000

_CONDITIONS = (
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)


def node_conditions(existing: list[Obj], now: float) -> list[Obj]:
    """The node's conditions after one kubelet status sync: others kept, the four set, Ready last."""
    stamp = metav1_time(now)
    by_type = {c.get("type"): c for c in existing}
    mine = {ctype for ctype, *_ in _CONDITIONS}
    out = [copy.deepcopy(c) for c in existing if c.get("type") not in mine]
    for ctype, status, reason, message in _CONDITIONS:
        previous = by_type.get(ctype)
        same = previous is not None and previous.get("status") == status
        transition = (previous or {}).get("lastTransitionTime") or stamp if same else stamp
        out.append({"type": ctype, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": stamp, "lastTransitionTime": transition})
    return out


def conditions_changed(old: list[Obj], new: list[Obj]) -> bool:
    """``nodeConditionsHaveChanged``: any difference but the heartbeat times."""

    def strip(conditions: list[Obj]) -> list[str]:
        return sorted(json.dumps({k: v for k, v in c.items() if k != "lastHeartbeatTime"}, sort_keys=True)
                      for c in conditions)

    return strip(old) != strip(new)


def device_capacity_patch(node: Obj) -> Obj:
    """Capacity/allocatable of KubeVirt's device plugins the node lacks (the device manager
    registers tun, vhost-net and kvm with the kubelet, 1000 devices each)."""
    status = node.get("status") or {}
    patch: Obj = {}
    for field in ("capacity", "allocatable"):
        have = status.get(field) or {}
        missing = {name: MAX_DEVICES for name in DEVICE_PLUGINS if name not in have}
        if missing:
            patch[field] = missing
    return patch


def node_status_patch(node: Obj, now: float, force: bool) -> Obj | None:
    """The kubelet's node status patch, or None when nothing but heartbeats changed and the report
    period has not passed (``force``)."""
    status = node.get("status") or {}
    existing = status.get("conditions") or []
    conditions = node_conditions(existing, now)
    devices = device_capacity_patch(node)
    if not force and not devices and not conditions_changed(existing, conditions):
        return None
    body: Obj = {"conditions": conditions, **devices}
    return {"status": body}


def lease_body(node_name: str, node_uid: str | None, now: float, base: Obj | None = None) -> Obj:
    """The Lease to create (``base`` None) or to update from ``base`` (the last written copy)."""
    lease: Obj = copy.deepcopy(base) if base else {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node_name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node_name},
    }
    lease["spec"]["leaseDurationSeconds"] = LEASE_DURATION_S
    lease["spec"]["renewTime"] = micro_time(now)
    if node_uid and not lease["metadata"].get("ownerReferences"):
        lease["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}
        ]
    return lease


def heartbeat_patch(now: float, schedulable: bool = True) -> Obj:
    return {
        "metadata": {
            "labels": {"kubevirt.io/schedulable": "true" if schedulable else "false",
                       "cpumanager": "false", "kubevirt.io/cpumanager": "false"},
            "annotations": {"kubevirt.io/heartbeat": metav1_time(now)},
        }
    }
