"""One qemu process: its command line, its files, and how it is started and stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from virtproof.core.processes import pid_alive, process_cmdline, processes_matching
from virtproof.lab.qemu.qmp import QMPConnection, QMPFailure, QMPLoop

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Disk:
    path: Path
    format: Literal["raw", "qcow2", "vmdk", "vhdx", "vpc"] = "qcow2"
    bus: Literal["virtio", "scsi", "sata", "ide"] = "virtio"
    snapshot: bool = False
    readonly: bool = False
    boot_index: int | None = None


@dataclass(frozen=True)
class UserNic:
    """qemu user networking with host forwards bound to ``bind_address`` on the node."""

    bind_address: str
    forwards: tuple[tuple[int, int], ...]  # (host port, guest port)
    model: Literal["virtio", "e1000", "vmxnet3"] = "virtio"
    mac: str | None = None


@dataclass(frozen=True)
class TapNic:
    """A tap device (created by the caller) on an L2 segment."""

    ifname: str
    mac: str
    model: Literal["virtio", "e1000", "vmxnet3"] = "virtio"


NIC_DEVICES = {"virtio": "virtio-net-pci", "e1000": "e1000", "vmxnet3": "vmxnet3"}


@dataclass(frozen=True)
class Firmware:
    """UEFI (OVMF) as two pflash drives: the read-only code and a per-boot copy of the variable
    store (the caller copies it; qemu writes to it). ``secure_boot`` needs SMM and a code build
    that enforces it (e.g. Debian's OVMF_CODE_4M.secboot.fd), as libvirt sets up for KubeVirt."""

    code: Path
    vars: Path
    secure_boot: bool = False


@dataclass(frozen=True)
class QemuConfig:
    guest_name: str  # qemu -name guest=..., carries the lab id: vp-<lab-id>-<vm>
    directory: Path  # where the pid file, QMP socket and console log go
    cpus: int = 1
    memory_mib: int = 256
    machine: str = "q35"
    accel: Literal["tcg", "kvm"] = "tcg"
    tb_size_mib: int = 64
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    disks: tuple[Disk, ...] = ()
    nics: tuple[UserNic | TapNic, ...] = ()
    rng: bool = True
    incoming: str | None = None  # "defer" for a migration destination
    start_paused: bool = True  # -S; a migration destination runs as soon as the stream ends
    # KubeVirt's device layout on q35: every PCI device behind its own PCIe root port, NICs first
    # (so the first NIC is enp1s0 in the guest), then disks, then the rng.
    pcie_root_ports: bool = False
    graphics: bool = False  # a VGA device, as KubeVirt attaches unless autoattachGraphicsDevice: false
    video_model: str = "VGA"  # the -device for graphics: VGA (KubeVirt's "vga") or bochs-display
    firmware: Firmware | None = None  # None: the machine's BIOS (SeaBIOS)
    balloon: bool = False  # virtio-balloon, as KubeVirt attaches unless autoattachMemBalloon: false
    no_reboot: bool = True  # a reboot ends the process (the lab); a boot proof lets the guest reboot
    # KiB added to -m (the qemu < 9.0 TCG migration work-around, see lab.qemu.defects); a migration
    # destination is the source's config with a new directory, so both ends get the same RAM size.
    ram_pad_kib: int = 0
    extra_args: tuple[str, ...] = ()

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"


def _disk_argv(index: int, disk: Disk, bus: str, scsi_bus: str) -> tuple[list[str], list[str]]:
    """(-drive args, -device args) of one disk; ``bus`` is the PCI placement (``,bus=rpN`` or "")."""
    opts = f"file={disk.path},if=none,id=disk{index},format={disk.format}"
    opts += ",snapshot=on" if disk.snapshot else ""
    opts += ",readonly=on" if disk.readonly else ""
    boot = f",bootindex={disk.boot_index}" if disk.boot_index is not None else ""
    if disk.bus == "virtio":
        device = f"virtio-blk-pci,drive=disk{index}{bus}{boot}"
    elif disk.bus == "scsi":
        device = f"scsi-hd,drive=disk{index},bus={scsi_bus}.0{boot}"
    elif disk.bus == "sata":
        device = f"ide-hd,drive=disk{index},bus=ide.{index}{boot}"
    else:
        device = f"ide-hd,drive=disk{index}{boot}"
    return ["-drive", opts], ["-device", device]


def _nic_argv(index: int, nic: UserNic | TapNic, bus: str) -> list[str]:
    if isinstance(nic, UserNic):
        fwd = "".join(f",hostfwd=tcp:{nic.bind_address}:{h}-:{g}" for h, g in nic.forwards)
        netdev = f"user,id=net{index}{fwd}"
    else:
        netdev = f"tap,id=net{index},ifname={nic.ifname},script=no,downscript=no"
    mac = f",mac={nic.mac}" if nic.mac else ""
    return ["-netdev", netdev, "-device", f"{NIC_DEVICES[nic.model]},netdev=net{index}{mac}{bus}"]


class _RootPorts:
    """Hands out PCIe root ports (``,bus=rpN``) in order, or "" when devices sit on the root bus."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.argv: list[str] = []

    def next(self) -> str:
        if not self.enabled:
            return ""
        n = len(self.argv) // 2 + 1
        self.argv += ["-device", f"pcie-root-port,id=rp{n},bus=pcie.0,chassis={n},slot={n}"]
        return f",bus=rp{n}"


def build_argv(cfg: QemuConfig) -> list[str]:
    accel = f"tcg,tb-size={cfg.tb_size_mib}" if cfg.accel == "tcg" else "kvm"
    argv = [
        QEMU,
        "-name",
        f"guest={cfg.guest_name},debug-threads=on",
        "-machine",
        cfg.machine + (",smm=on" if cfg.firmware and cfg.firmware.secure_boot else ""),
        "-accel",
        accel,
        "-cpu",
        "host" if cfg.accel == "kvm" else "max",
        "-smp",
        str(cfg.cpus),
        "-m",
        f"{cfg.memory_mib * 1024 + cfg.ram_pad_kib}K" if cfg.ram_pad_kib else str(cfg.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        *(["-no-reboot"] if cfg.no_reboot else []),
        "-chardev",
        f"file,id=console,path={cfg.console_log}",
        "-serial",
        "chardev:console",
        "-qmp",
        f"unix:{cfg.qmp_socket},server=on,wait=off",
        "-pidfile",
        str(cfg.pidfile),
        *(["-S"] if cfg.start_paused else []),
    ]
    if cfg.kernel:
        argv += ["-kernel", str(cfg.kernel)]
    if cfg.initrd:
        argv += ["-initrd", str(cfg.initrd)]
    if cfg.append:
        argv += ["-append", cfg.append]
    if cfg.firmware:
        fw = cfg.firmware
        if fw.secure_boot:
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={fw.code}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={fw.vars}"]
    if cfg.graphics:
        argv += ["-device", cfg.video_model]
    ports = _RootPorts(cfg.pcie_root_ports)
    nics = [_nic_argv(i, nic, ports.next()) for i, nic in enumerate(cfg.nics)] if cfg.pcie_root_ports else []
    drives: list[str] = []
    devices: list[str] = []
    if any(d.bus == "scsi" for d in cfg.disks):
        devices += ["-device", f"virtio-scsi-pci,id=scsi0{ports.next()}"]
    for i, disk in enumerate(cfg.disks):
        drive, device = _disk_argv(i, disk, ports.next() if disk.bus == "virtio" else "", "scsi0")
        drives += drive
        devices += device
    if not cfg.pcie_root_ports:
        nics = [_nic_argv(i, nic, "") for i, nic in enumerate(cfg.nics)]
    rng: list[str] = []
    if cfg.rng:
        rng = ["-object", "rng-random,id=rng0,filename=/dev/urandom"]
        rng += ["-device", f"virtio-rng-pci,rng=rng0{ports.next()}"]
    if cfg.balloon:
        rng += ["-device", f"virtio-balloon-pci,id=balloon0{ports.next()}"]
    if cfg.pcie_root_ports:
        argv += ports.argv + [a for n in nics for a in n] + drives + devices
    else:
        argv += drives + devices + [a for n in nics for a in n]
    argv += rng
    if cfg.incoming:
        argv += ["-incoming", cfg.incoming]
    return argv + list(cfg.extra_args)


_STARTED: weakref.WeakSet[QemuProcess] = weakref.WeakSet()
_STARTED_LOCK = threading.Lock()


def kill_all_started() -> int:
    """SIGKILL every qemu this process started that still runs (for signal handlers); how many."""
    with _STARTED_LOCK:
        procs = [p for p in _STARTED if p.alive()]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.popen.kill()
    return len(procs)


def die_with_parent() -> list[str]:
    """A launch prefix that makes qemu die with the thread that started it, even on SIGKILL."""
    return ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []


class QemuProcess:
    """A started qemu (paused with -S until ``resume``, unless its config says otherwise); owns its QMP
    connection. Used by the lab's VMs, their migration destinations, and the premigrate boot proof."""

    def __init__(self, cfg: QemuConfig, loop: QMPLoop, prefix: Sequence[str] = ()) -> None:
        self.cfg = cfg
        cfg.directory.mkdir(parents=True, exist_ok=True)
        self.argv = [*prefix, *build_argv(cfg)]
        self._stderr = open(cfg.directory / "qemu.stderr", "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr, start_new_session=True
        )
        with _STARTED_LOCK:
            _STARTED.add(self)
        # The pid file holds qemu's pid even when started through `ip netns exec` (which execs).
        (cfg.directory / "qemu.pid.spawned").write_text(str(self.popen.pid))
        self.qmp = QMPConnection(loop, cfg.guest_name)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stderr_tail(self, limit: int = 400) -> str:
        try:
            return (self.cfg.directory / "qemu.stderr").read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""

    def connect(self, timeout: float = 30.0) -> None:
        try:
            self.qmp.connect(self.cfg.qmp_socket, timeout, self.alive)
        except QMPFailure as exc:
            raise QMPFailure(f"{exc}: {self.stderr_tail()}") from exc

    def resume(self) -> None:
        self.qmp.execute("cont")

    def screendump(self, path: Path, timeout: float = 10.0) -> None:
        """The guest's screen as a PPM file (QMP ``screendump``); needs a graphics device."""
        self.qmp.execute("screendump", {"filename": str(path)}, timeout=timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask qemu to quit; SIGTERM then SIGKILL if it does not. Idempotent, never raises."""
        if self.alive():
            try:
                self.qmp.execute("quit", timeout=2)
            except QMPFailure:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.terminate()
                try:
                    self.popen.wait(2)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(5)
        self.qmp.close()
        self._stderr.close()


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait until ``pid`` has exited (or is a zombie); False if it is still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def kill_by_pidfile(pidfile: Path, marker: str) -> int | None:
    """Kill the process in ``pidfile`` if its command line carries ``marker``; return its pid."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid) or marker not in process_cmdline(pid):
        return None
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid, 2.0)
    return pid


def find_processes(marker: str) -> list[int]:
    """PIDs of qemu processes whose command line carries ``marker``."""
    return processes_matching(marker, program=QEMU)
