"""What runs behind a virt-launcher pod: a real qemu guest on the qemu lab, or nothing (paper).

``QemuGuests`` attaches to the qemu lab the control-plane lab brought up
(``QemuLabHandle(...).attach()``) and uses its ``QemuPlatform``: each VMI is one micro guest
(``VMSpec(network="l2")``) on the lab node behind the VMI's Kubernetes node, with one address
on the lab's L2 segment for its whole life, so the guest keeps it across migrations (what a
bridge on a shared network gives a KubeVirt VM). The address is leased when the first launcher
pod of the VMI starts, so the pod can report it as its IP before the guest boots. Migrations go
through the lab's migrator with virt-launcher's monitor (``simnodes.migration``). Every guest
the agent starts is tracked; ``close()`` stops them all, and the qemu lab's own cleanup by lab
id removes anything a killed agent left.

``PaperGuests`` keeps the same interface without processes: guests "run" at once, migrations
complete at once, pod IPs come from the configured pod CIDR. That is the control-plane scale
mode (1,000 VMIs on 100 nodes) where only KubeVirt's and Kubernetes' own work is measured.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from virtproof.lab.platform import MigrationResult, PlatformError, VMSpec
from virtproof.lab.qemu import l2
from virtproof.lab.qemu.lab import LabError, QemuLabHandle
from virtproof.lab.qemu.network import NetworkError
from virtproof.lab.qemu.platform import QemuPlatform, QemuVM
from virtproof.lab.qemu.process import QEMU
from virtproof.lab.simnodes.config import NodeConfig
from virtproof.lab.simnodes.migration import LauncherMigrator, LauncherOptions, MonitorState
from virtproof.scenarios.model import Guest as GuestModel
from virtproof.scenarios.model import QemuLab

log = logging.getLogger("virtproof.lab.simnodes")

FALLBACK_MACHINE = "pc-q35-rhel9.6.0"  # what KubeVirt's own builds report for q35


class GuestError(RuntimeError):
    """A guest could not be started, found or moved."""


@dataclass(frozen=True)
class Started:
    ip: str | None
    mac: str | None
    running_at: float  # epoch seconds the domain started running (qemu's RESUME)


class Guests(Protocol):
    machine_types: tuple[str, ...]  # what the node labeller advertises; [0] is what guests report

    def address(self, name: str) -> str | None: ...

    def release_address(self, name: str) -> None: ...

    def start(self, name: str, node: str, cpus: int, memory_mib: int) -> Started: ...

    def stop(self, name: str) -> None: ...

    def alive(self, name: str) -> bool: ...

    def has(self, name: str) -> bool: ...

    def migrate(self, name: str, target: str, options: LauncherOptions, state: MonitorState) -> MigrationResult: ...

    def kill_destination(self, name: str) -> bool: ...

    def names(self) -> list[str]: ...

    def close(self) -> None: ...


def resolve_machine(alias: str = "q35") -> tuple[str, ...]:
    """(canonical, alias) of the machine type qemu runs for ``alias`` (``-machine help``)."""
    if shutil.which(QEMU) is None:
        return FALLBACK_MACHINE, alias
    try:
        out = subprocess.run([QEMU, "-machine", "help"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return FALLBACK_MACHINE, alias
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == alias and "(alias of " in line:
            return line.rsplit("(alias of ", 1)[1].rstrip(")").strip(), alias
    return FALLBACK_MACHINE, alias


def map_nodes(nodes: Sequence[NodeConfig], platform: QemuPlatform) -> dict[str, str]:
    """Kubernetes node -> qemu lab node: by namespace, else address, else name, else position."""
    lab_nodes = list(platform.state.nodes)
    mapping: dict[str, str] = {}
    for i, node in enumerate(nodes):
        match = next((n for n in lab_nodes if node.netns and n.netns == node.netns), None)
        match = match or next((n for n in lab_nodes if n.address == node.address), None)
        match = match or next((n for n in lab_nodes if n.name == node.name), None)
        if match is None and i < len(lab_nodes):
            match = lab_nodes[i]
        if match is None:
            raise GuestError(f"node {node.name}: the qemu lab {platform.state.lab_id} has no node for it")
        mapping[node.name] = match.name
    if len(set(mapping.values())) != len(mapping):
        raise GuestError(f"two Kubernetes nodes map to one qemu lab node: {mapping}")
    return mapping


class QemuGuests:
    """Real micro guests on the qemu lab ``lab_id``."""

    def __init__(self, lab_id: str, nodes: Sequence[NodeConfig]) -> None:
        try:
            self.platform = QemuLabHandle(QemuLab(kind="qemu"), GuestModel(), lab_id).attach()
        except LabError as exc:
            raise GuestError(str(exc)) from exc
        self.migrator = LauncherMigrator(self.platform)
        self.platform._migrations = self.migrator  # the lab migrator, with KubeVirt's monitor hooked in
        self.node_map = map_nodes(nodes, self.platform)
        self.k8s_node = {q: k for k, q in self.node_map.items()}
        self.machine_types = resolve_machine(self.platform.state.extra.get("machine", "q35"))
        self._vms: dict[str, QemuVM] = {}
        self._lock = threading.Lock()

    def address(self, name: str) -> str | None:
        try:
            segment = l2.ensure_segment(self.platform.state)
            return l2.lease(self.platform.state, segment, name).ip
        except (NetworkError, OSError) as exc:
            raise GuestError(f"no L2 address for {name}: {exc}") from exc

    def release_address(self, name: str) -> None:
        if not self.has(name):
            try:
                l2.release(self.platform.state, name)
            except (OSError, ValueError):
                pass

    def start(self, name: str, node: str, cpus: int, memory_mib: int) -> Started:
        spec = VMSpec(name=name, cpus=cpus, memory_mib=memory_mib, node=self.node_map[node], network="l2")
        try:
            vm = self.platform.create_vm(spec)
        except (PlatformError, OSError, subprocess.CalledProcessError) as exc:
            raise GuestError(f"guest {name} did not start: {exc}") from exc
        with self._lock:
            self._vms[name] = vm
        try:
            event = self.platform.wait_running(vm, 60)
        except PlatformError as exc:
            self.stop(name)
            raise GuestError(str(exc)) from exc
        nic = vm.process.cfg.nics[0] if vm.process.cfg.nics else None
        return Started(vm.ssh_endpoint().host, getattr(nic, "mac", None), event.timestamp)

    def _vm(self, name: str) -> QemuVM | None:
        with self._lock:
            return self._vms.get(name)

    def has(self, name: str) -> bool:
        return self._vm(name) is not None

    def names(self) -> list[str]:
        with self._lock:
            return list(self._vms)

    def stop(self, name: str) -> None:
        with self._lock:
            vm = self._vms.pop(name, None)
        if vm is not None:
            self.platform.delete_vm(vm)

    def alive(self, name: str) -> bool:
        vm = self._vm(name)
        return vm is not None and vm.alive()

    def migrate(self, name: str, target: str, options: LauncherOptions, state: MonitorState) -> MigrationResult:
        vm = self._vm(name)
        if vm is None:
            raise GuestError(f"no guest {name} on this agent")
        self.migrator.register(vm.name, state)
        try:
            return self.platform.migrate(vm, self.node_map[target], options.policy())
        except PlatformError as exc:
            now = time.time()
            return MigrationResult(name, vm.node, target, False, "precopy", now, now, 0.0, error=str(exc))
        finally:
            self.migrator.unregister(vm.name)

    def kill_destination(self, name: str) -> bool:
        vm = self._vm(name)
        if vm is None or self.platform.migration_progress(vm) is None:
            return False
        try:
            self.platform.kill_destination(vm)
        except PlatformError:
            return False
        return True

    def close(self) -> None:
        for name in self.names():
            try:
                self.stop(name)
            except Exception:  # stopping every guest matters more than one error
                log.exception("stopping guest %s", name)
        self.platform.close()


class PaperGuests:
    """No processes: the same state machine, instantly."""

    def __init__(self, pod_cidr: str) -> None:
        self.machine_types = resolve_machine()
        self._network = ipaddress.IPv4Network(pod_cidr, strict=False)
        self._next = 2
        self._addresses: dict[str, str] = {}
        self._free: list[str] = []
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def address(self, name: str) -> str | None:
        with self._lock:
            if name not in self._addresses:
                if self._free:
                    self._addresses[name] = self._free.pop()
                else:
                    if self._next >= self._network.num_addresses - 1:
                        raise GuestError(f"pod CIDR {self._network} is full")
                    self._addresses[name] = str(self._network.network_address + self._next)
                    self._next += 1
            return self._addresses[name]

    def release_address(self, name: str) -> None:
        with self._lock:
            if name not in self._running and name in self._addresses:
                self._free.append(self._addresses.pop(name))

    def start(self, name: str, node: str, cpus: int, memory_mib: int) -> Started:
        ip = self.address(name)
        with self._lock:
            self._running.add(name)
        return Started(ip, None, time.time())

    def stop(self, name: str) -> None:
        with self._lock:
            self._running.discard(name)
        self.release_address(name)

    def alive(self, name: str) -> bool:
        with self._lock:
            return name in self._running

    def has(self, name: str) -> bool:
        return self.alive(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def migrate(self, name: str, target: str, options: LauncherOptions, state: MonitorState) -> MigrationResult:
        state.domain_detected = True
        now = time.time()
        return MigrationResult(name, "", target, True, "precopy", now, now, 0.0)

    def kill_destination(self, name: str) -> bool:
        return False

    def close(self) -> None:
        with self._lock:
            self._running.clear()
