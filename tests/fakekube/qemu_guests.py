"""The fake cluster's virt-handler on real qemu: every VMI boots the real micro guest on the
qemu lab node named like the fake node, and migrations are real qemu live migrations.

The fake cluster's nodes are the qemu lab's nodes; the NodePort proxy forwards to the qemu
guest's forwarded SSH/HTTP ports, so the backend's readiness over SSH is the real guest's.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from virtproof.lab.platform import MigrationPolicy, VMSpec
from virtproof.lab.qemu.platform import QemuPlatform, QemuVM

from fakekube.guests import GuestRequest, MigrationCancelled


class QemuGuests:
    def __init__(self, platform: QemuPlatform, image: str = "micro", boot_timeout: float = 120.0) -> None:
        self.platform = platform
        self.image = image
        self.boot_timeout = boot_timeout
        self.vms: dict[str, QemuVM] = {}
        self.images_seen: list[str] = []
        self._lock = threading.Lock()

    @property
    def nodes(self) -> Sequence[str]:
        return self.platform.nodes()

    def start(self, req: GuestRequest) -> None:
        # The containerDisk names the image; the fake maps any image onto the lab's micro guest.
        self.images_seen.append(req.image)
        spec = VMSpec(name=f"{req.namespace[-20:]}-{req.vmi}"[-60:], image=self.image, cpus=req.cpus,
                      memory_mib=req.memory_mib, node=req.node, scratch_disk_mib=req.scratch_mib)
        vm = self.platform.create_vm(spec)
        with self._lock:
            self.vms[req.vmi] = vm
        self.platform.wait_running(vm, self.boot_timeout)

    def endpoint(self, vmi: str, port: int) -> tuple[str, int] | None:
        with self._lock:
            vm = self.vms.get(vmi)
        if vm is None:
            return None
        ep = vm.ssh_endpoint() if port == 22 else vm.http_endpoint() if port == 80 else None
        return (ep.host, ep.port) if ep is not None else None

    def migrate(self, vmi: str, target_node: str, postcopy: bool, bandwidth_mibps: int | None,
                cancelled: threading.Event) -> str:
        with self._lock:
            vm = self.vms[vmi]
        if cancelled.is_set():
            raise MigrationCancelled(vmi)
        policy = MigrationPolicy(mode="postcopy" if postcopy else "precopy", bandwidth_mibps=bandwidth_mibps,
                                 timeout_s=120)
        result = self.platform.migrate(vm, target_node, policy)
        if not result.ok:
            raise RuntimeError(result.error or "qemu migration failed")
        return "PostCopy" if result.mode == "postcopy" else "PreCopy"

    def stop(self, vmi: str) -> None:
        with self._lock:
            vm = self.vms.pop(vmi, None)
        if vm is not None:
            self.platform.delete_vm(vm)

    def close(self) -> None:
        with self._lock:
            vms = list(self.vms.values())
            self.vms.clear()
        for vm in vms:
            self.platform.delete_vm(vm)
