"""QemuPlatform: the Platform protocol over real qemu processes on the lab's nodes."""

from __future__ import annotations

import base64
import fcntl
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from virtproof.core.migration import MIGRATION_DEFECT_FACT
from virtproof.lab.images.micro import GuestImage
from virtproof.lab.images.store import ImageStore
from virtproof.lab.platform import (
    Capability,
    Endpoint,
    GuestAccess,
    MigrationPolicy,
    MigrationResult,
    PlatformError,
    Timeline,
    TimelineEvent,
    VMSpec,
)
from virtproof.lab.qemu import l2
from virtproof.lab.qemu.accel import qemu_version
from virtproof.lab.qemu.defects import TcgDirtyBitmapDecision, WorkaroundSetting, decide_tcg_dirty_bitmap
from virtproof.lab.qemu.migration import MigrationProgress, Migrator
from virtproof.lab.qemu.network import NetworkError, exec_prefix
from virtproof.lab.qemu.process import Disk, QemuConfig, QemuProcess, TapNic, UserNic, find_processes, wait_gone
from virtproof.lab.qemu.qmp import QMPFailure, QMPLoop
from virtproof.lab.qemu.state import LabState, NodeState

USER_NET_GUEST = "vp.ip=10.0.2.15/24 vp.gw=10.0.2.2"
PORT_BASE = 20000
CAPABILITIES = frozenset(
    {
        Capability.BOOT,
        Capability.HOST_METRICS,
        Capability.LIVE_MIGRATION,
        Capability.POST_COPY,
        Capability.AUTO_CONVERGE,
        Capability.MIGRATION_BANDWIDTH_LIMIT,
        Capability.MIGRATION_DOWNTIME_LIMIT,
        Capability.NODE_DRAIN,
        Capability.FAULT_INJECTION,
    }
)


@dataclass
class QemuVM:
    """A guest on the qemu lab. Implements ``virtproof.lab.platform.VM``."""

    name: str
    node: str
    spec: VMSpec
    directory: Path
    ssh: Endpoint
    http: Endpoint
    process: QemuProcess
    image: GuestImage
    timeline: Timeline = field(default_factory=Timeline)

    def ssh_endpoint(self) -> Endpoint:
        return self.ssh

    def http_endpoint(self) -> Endpoint:
        return self.http

    def http_paths(self) -> Mapping[str, Endpoint]:
        return {"direct": self.http}

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.process.cfg.console_log.read_text(errors="replace")  # moves with migration
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.alive()

    def diagnostics(self) -> str:
        return f"qemu: {self.process.stderr_tail()}"


def client_key_path(state: LabState) -> Path:
    return state.directory / "ssh" / "id_ed25519"


class QemuPlatform:
    """Real qemu VMs on network-namespace (or loopback) nodes. Implements ``virtproof.lab.platform.Platform``."""

    name = "qemu"

    def __init__(self, state: LabState, store: ImageStore | None = None) -> None:
        self.state = state
        self.store = store or ImageStore.default()
        self._loop: QMPLoop | None = None
        self._lock = threading.Lock()
        self._vms: dict[str, QemuVM] = {}
        self._migrations = Migrator(self)
        self._qemu_version: str | None = None
        self._tcg_dirty_bitmap: TcgDirtyBitmapDecision | None = None

    # --- Platform protocol -----------------------------------------------------------

    @property
    def accel(self) -> str:
        return self.state.accel

    @property
    def capabilities(self) -> frozenset[Capability]:
        return CAPABILITIES

    def nodes(self) -> Sequence[str]:
        return [n.name for n in self.state.nodes]

    def facts(self) -> Mapping[str, object]:
        return {
            "network": self.state.network,
            "accel_reason": self.state.extra.get("accel_reason"),
            "qemu_version": self.qemu_version(),
            MIGRATION_DEFECT_FACT: self.tcg_dirty_bitmap().fact(self.qemu_version()),
        }

    def qemu_version(self) -> str:
        """``qemu-system-x86_64 --version``'s first line (asked once per platform)."""
        if self._qemu_version is None:
            self._qemu_version = qemu_version()
        return self._qemu_version

    def tcg_dirty_bitmap(self) -> TcgDirtyBitmapDecision:
        """Whether guests get the qemu < 9.0 TCG migration work-around (lab.qemu.defects)."""
        if self._tcg_dirty_bitmap is None:
            setting: WorkaroundSetting = "off" if self.state.extra.get("tcg_migration_workaround") == "off" else "auto"
            self._tcg_dirty_bitmap = decide_tcg_dirty_bitmap(self.state.accel, self.qemu_version(), setting)
        return self._tcg_dirty_bitmap

    def guest_access(self, image: str) -> GuestAccess:
        built = self._image(image)
        return GuestAccess(built.user, client_key_path(self.state), built.host_key)

    def create_vm(self, spec: VMSpec) -> QemuVM:
        node = self.state.node(spec.node) if spec.node else self.state.node(self._least_loaded_node())
        image = self._image(spec.image)
        directory = self.state.directory / "vms" / spec.name
        try:
            directory.mkdir(parents=True)
        except FileExistsError:
            raise PlatformError(f"a VM named {spec.name!r} already exists in lab {self.state.lab_id}") from None
        (directory / "vm.json").write_text(json.dumps({"name": spec.name, "node": node.name}))
        nic, guest_net, ssh, http = self._nic(spec, node)
        disks: list[Disk] = []
        if spec.scratch_disk_mib:
            scratch = directory / "scratch.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(scratch), f"{spec.scratch_disk_mib}M"],
                check=True,
                capture_output=True,
            )
            disks.append(Disk(scratch, "qcow2", spec.disk_bus))
        if image.disk is not None:
            disks.insert(
                0, Disk(image.disk, "qcow2" if image.disk.suffix == ".qcow2" else "raw", spec.disk_bus, snapshot=True)
            )
        key_line = client_key_path(self.state).with_suffix(".pub").read_text().strip()
        append = ""
        if image.kernel is not None:
            key_b64 = base64.b64encode(key_line.encode()).decode()
            append = f"console=ttyS0 quiet panic=-1 no_timer_check vp.name={spec.name} vp.key={key_b64} {guest_net}"
        cfg = QemuConfig(
            guest_name=f"vp-{self.state.lab_id}-{spec.name}",
            directory=directory,
            cpus=spec.cpus,
            memory_mib=spec.memory_mib,
            accel="kvm" if self.state.accel == "kvm" else "tcg",
            tb_size_mib=int(self.state.extra.get("tb_size_mib", "64")),
            machine=self.state.extra.get("machine", "q35"),
            ram_pad_kib=self.tcg_dirty_bitmap().ram_pad_kib,
            kernel=image.kernel,
            initrd=image.initrd,
            append=append,
            disks=tuple(disks),
            nics=(nic,),
        )
        timeline = Timeline()
        timeline.add("created", time.time(), "harness")
        process = QemuProcess(cfg, self._qmp_loop(), exec_prefix(node))
        vm = QemuVM(
            spec.name,
            node.name,
            spec,
            directory,
            ssh,
            http,
            process,
            image,
            timeline,
        )
        with self._lock:
            self._vms[spec.name] = vm
        try:
            process.connect()
            process.resume()
        except QMPFailure as exc:
            self.delete_vm(vm)  # the process may be running (a slow QMP under load): never leak it
            raise PlatformError(f"VM {spec.name} on {node.name} did not start: {exc}") from exc
        return vm

    def wait_running(self, vm: object, timeout: float) -> TimelineEvent:
        qvm = self._own(vm)
        try:
            event = qvm.process.qmp.wait_event("RESUME", timeout)
        except QMPFailure as exc:
            raise PlatformError(f"VM {qvm.name} never reported running: {exc}") from exc
        return qvm.timeline.get("running") or qvm.timeline.add("running", event.timestamp, "platform")

    def delete_vm(self, vm: object) -> None:
        qvm = self._own(vm)
        qvm.process.stop()
        with self._lock:
            self._vms.pop(qvm.name, None)
        self._migrations.forget(qvm)
        shutil.rmtree(qvm.directory, ignore_errors=True)

    def migrate(self, vm: object, target_node: str, policy: MigrationPolicy) -> MigrationResult:
        """Live-migrate ``vm`` to ``target_node`` (see lab.qemu.migration)."""
        return self._migrations.migrate(self._own(vm), target_node, policy)

    def evacuate(self, node: str, timeout: float = 300.0, parallel: int = 2) -> list[MigrationResult]:
        """Drain ``node``: live-migrate every VM on it to the other nodes, ``parallel`` at a time
        (2, as KubeVirt's default parallelOutboundMigrationsPerNode)."""
        return self._migrations.evacuate(node, timeout, parallel)

    # --- FaultInjection, HostProcesses ----------------------------------------------------

    def migration_progress(self, vm: object) -> MigrationProgress | None:
        return self._migrations.progress(self._own(vm).name)

    def kill_destination(self, vm: object) -> None:
        wait_gone(self._migrations.kill_destination(self._own(vm).name))

    def kill_source(self, vm: object) -> None:
        wait_gone(self._migrations.kill_source(self._own(vm).name))

    def set_node_link(self, node: str, up: bool) -> None:
        self._migrations.set_node_link(node, up)

    def migration_leftovers(self, vm: object) -> list[str]:
        qvm = self._own(vm)
        current = qvm.process.pid if qvm.process.alive() else None
        marker = f"guest={qvm.process.cfg.guest_name},"
        return [f"qemu pid {pid}" for pid in find_processes(marker) if pid != current]

    def host_pid(self, vm: object) -> int | None:
        """The qemu process's pid on this host."""
        return self._own(vm).process.pid

    def close(self) -> None:
        with self._lock:
            vms = list(self._vms.values())
        for vm in vms:
            self.delete_vm(vm)
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    # --- internals ------------------------------------------------------------------------

    def _image(self, name: str) -> GuestImage:
        """The image pinned when the lab came up, else the store's current one."""
        pinned = self.state.extra.get(f"image:{name}")
        if pinned and (Path(pinned) / "image.json").exists():
            return GuestImage.load(Path(pinned))
        return self.store.get(name)

    def _nic(self, spec: VMSpec, node: NodeState) -> tuple[UserNic | TapNic, str, Endpoint, Endpoint]:
        """(NIC, guest network kernel parameters, SSH endpoint, HTTP endpoint) for ``spec.network``."""
        if spec.network == "l2":
            try:
                address = l2.lease(self.state, l2.ensure_segment(self.state), spec.name)
                tap = l2.create_tap(self.state, node)
            except NetworkError as exc:
                raise PlatformError(f"VM {spec.name}: {exc}") from exc
            nic: UserNic | TapNic = TapNic(tap, address.mac, spec.nic_model)
            return nic, address.cmdline, Endpoint(address.ip, 22), Endpoint(address.ip, 80)
        ssh_port, http_port = self._ports(node.address, 2)
        nic = UserNic(node.address, ((ssh_port, 22), (http_port, 80)), spec.nic_model)
        return nic, USER_NET_GUEST, Endpoint(node.address, ssh_port), Endpoint(node.address, http_port)

    def _own(self, vm: object) -> QemuVM:
        if not isinstance(vm, QemuVM):
            raise TypeError(f"not a qemu VM: {vm!r}")
        return vm

    def _qmp_loop(self) -> QMPLoop:
        with self._lock:
            if self._loop is None:
                self._loop = QMPLoop(f"qmp-{self.state.lab_id}")
            return self._loop

    def _least_loaded_node(self) -> str:
        counts = {n.name: 0 for n in self.state.nodes}
        for meta in (self.state.directory / "vms").glob("*/vm.json"):
            try:
                node = json.loads(meta.read_text())["node"]
            except (OSError, ValueError, KeyError):
                continue
            if node in counts:
                counts[node] += 1
        return min(counts, key=lambda n: (counts[n], n))

    def _ports(self, address: str, count: int) -> list[int]:
        """Ports for host forwards: a lab-wide counter (netns nodes own their addresses),
        skipping any port already bound on the address (loopback nodes share the host)."""
        ports: list[int] = []
        with open(self.state.directory / "ports.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            text = fh.read().strip()
            nxt = int(text) if text else PORT_BASE
            while len(ports) < count:
                nxt += 1
                if self.state.network == "netns" or _port_free(address, nxt):
                    ports.append(nxt)
            fh.seek(0)
            fh.truncate()
            fh.write(str(nxt))
        return ports


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True
