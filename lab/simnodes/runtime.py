"""What the agent's nodes are running: pods the kubelet started, guests, migrations in flight.

The kubelet side (``kubelet.py``) and the virt-handler side (``handler.py``) share these records
the way the real ones share a node: the kubelet knows which containers run and when they
exited, virt-handler knows the domain. Objects themselves always come from the informers.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from virtproof.lab.platform import MigrationResult
from virtproof.lab.simnodes.migration import LauncherOptions, MonitorState
from virtproof.lab.simnodes.podstatus import ContainerExit

Obj = dict[str, Any]

LAUNCHER = "launcher"
HANDLER = "handler"


def guest_name(namespace: str, name: str, uid: str) -> str:
    """The qemu lab name of a VMI's guest: readable, unique per VMI (uid), short.

    Short because it names the guest's state directory, under which qemu's QMP socket lives
    (``<state>/labs/<lab>/vms/<guest>/incoming-<n>/qmp.sock`` for a migration target), and a
    unix socket path has at most 107 bytes: with a run namespace (``virtproof-<run id>``) and
    the lab directory, a 47-character name passed it and every migration target failed to
    start. At most 31 characters; the uid keeps it unique. KubeVirt names its per-VMI sockets on
    the host by UID for the same reason (pkg/virt-handler/migration-proxy/migration-proxy.go,
    ``SourceUnixFile``: ``<base>/migrationproxy/<vmi uid>-source.sock``).
    """
    base = re.sub(r"[^a-z0-9-]+", "-", f"{namespace[:7]}-{name}".lower())
    base = re.sub(r"-{2,}", "-", base).strip("-")[:24].strip("-")
    return f"{base}-{uid.replace('-', '')[:6]}"


def pod_kind(pod: Obj) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get("kubevirt.io") == "virt-launcher":
        return LAUNCHER
    if labels.get("kubevirt.io") == "virt-handler":
        return HANDLER
    return None


def owner_vmi(pod: Obj) -> tuple[str, str] | None:
    """(VMI key, VMI uid) of a virt-launcher pod."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "VirtualMachineInstance":
            return f"{meta.get('namespace')}/{ref.get('name')}", str(ref.get("uid"))
    return None


@dataclass
class PodRecord:
    """A pod whose containers this node started."""

    uid: str
    key: str
    node: str
    kind: str
    started_at: float
    pod_ip: str | None
    vmi_key: str | None = None
    vmi_uid: str | None = None
    guest: str | None = None  # the guest name behind a launcher pod
    exited: ContainerExit | None = None
    stopping: bool = False


@dataclass
class GuestRecord:
    """A VMI's domain on this agent's nodes."""

    vmi_uid: str
    vmi_key: str
    name: str
    node: str  # the Kubernetes node it runs on
    pod_uid: str  # the launcher pod that runs it
    state: str = "starting"  # starting, running, stopping, stopped, crashed, failed
    ip: str | None = None
    mac: str | None = None
    running_at: float = 0.0
    error: str = ""
    migrating: bool = False


@dataclass
class MigrationJob:
    """One VirtualMachineInstanceMigration as the source and target handlers carry it out."""

    uid: str
    vmi_key: str
    guest: str
    source: str
    target: str
    target_pod: str
    source_pod: str  # uid of the launcher pod that ran the guest when the migration started
    options: LauncherOptions
    monitor: MonitorState
    started: float = field(default_factory=time.time)
    finished: bool = False
    result: MigrationResult | None = None
    guest_lost: bool = False

    @property
    def ok(self) -> bool:
        return self.finished and self.result is not None and self.result.ok

    @property
    def end(self) -> float:
        return self.result.finished if self.result is not None else time.time()

    @property
    def failure_reason(self) -> str:
        if self.monitor.abort_status == "Succeeded":
            return "Live migration has been aborted"
        error = self.result.error if self.result is not None else "unknown"
        return f"operation failed: migration out job: {error}"

    @property
    def abort_status(self) -> str:
        return self.monitor.abort_status if self.monitor.abort_status != "InProgress" else "Failed"


class Runtime:
    """The records, under one lock (records are small; syncs are per key already)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pods: dict[str, PodRecord] = {}  # by pod uid
        self.guests: dict[str, GuestRecord] = {}  # by VMI uid
        self.migrations: dict[str, MigrationJob] = {}  # by migration uid

    def pod_by_key(self, key: str) -> PodRecord | None:
        with self.lock:
            return next((p for p in self.pods.values() if p.key == key), None)

    def pods_of_vmi(self, vmi_uid: str) -> list[PodRecord]:
        with self.lock:
            return [p for p in self.pods.values() if p.vmi_uid == vmi_uid]

    def running_launcher(self, vmi_uid: str, node: str, pod_name: str | None = None) -> PodRecord | None:
        with self.lock:
            for pod in self.pods.values():
                if (pod.vmi_uid == vmi_uid and pod.node == node and pod.exited is None and not pod.stopping
                        and (pod_name is None or pod.key.endswith(f"/{pod_name}"))):
                    return pod
        return None
