"""One qemu process: its command line, its files, and how it is started and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lab.qemu.qmp import QMPConnection, QMPFailure, QMPLoop
from lab.qemu.state import pid_alive, process_cmdline

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Disk:
    path: Path
    format: Literal["raw", "qcow2", "vmdk", "vhdx", "vpc"] = "qcow2"
    bus: Literal["virtio", "scsi", "sata", "ide"] = "virtio"
    snapshot: bool = False
    readonly: bool = False


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


def build_argv(cfg: QemuConfig) -> list[str]:
    accel = f"tcg,tb-size={cfg.tb_size_mib}" if cfg.accel == "tcg" else "kvm"
    argv = [
        QEMU,
        "-name",
        f"guest={cfg.guest_name},debug-threads=on",
        "-machine",
        cfg.machine,
        "-accel",
        accel,
        "-cpu",
        "host" if cfg.accel == "kvm" else "max",
        "-smp",
        str(cfg.cpus),
        "-m",
        str(cfg.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
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
    scsi = False
    for i, disk in enumerate(cfg.disks):
        opts = f"file={disk.path},if=none,id=disk{i},format={disk.format}"
        opts += ",snapshot=on" if disk.snapshot else ""
        opts += ",readonly=on" if disk.readonly else ""
        argv += ["-drive", opts]
        if disk.bus == "virtio":
            argv += ["-device", f"virtio-blk-pci,drive=disk{i}"]
        elif disk.bus == "scsi":
            if not scsi:
                argv += ["-device", "virtio-scsi-pci,id=scsi0"]
                scsi = True
            argv += ["-device", f"scsi-hd,drive=disk{i},bus=scsi0.0"]
        elif disk.bus == "sata":
            argv += ["-device", f"ide-hd,drive=disk{i},bus=ide.{i}"]
        else:
            argv += ["-device", f"ide-hd,drive=disk{i}"]
    for i, nic in enumerate(cfg.nics):
        if isinstance(nic, UserNic):
            fwd = "".join(f",hostfwd=tcp:{nic.bind_address}:{h}-:{g}" for h, g in nic.forwards)
            argv += ["-netdev", f"user,id=net{i}{fwd}"]
        else:
            argv += ["-netdev", f"tap,id=net{i},ifname={nic.ifname},script=no,downscript=no"]
        mac = f",mac={nic.mac}" if nic.mac else ""
        argv += ["-device", f"{NIC_DEVICES[nic.model]},netdev=net{i}{mac}"]
    if cfg.rng:
        argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]
    if cfg.incoming:
        argv += ["-incoming", cfg.incoming]
    return argv + list(cfg.extra_args)


class QemuProcess:
    """A started qemu, paused (-S) until ``resume``; owns its QMP connection."""

    def __init__(self, cfg: QemuConfig, loop: QMPLoop, prefix: Sequence[str] = ()) -> None:
        self.cfg = cfg
        cfg.directory.mkdir(parents=True, exist_ok=True)
        self.argv = [*prefix, *build_argv(cfg)]
        self._stderr = open(cfg.directory / "qemu.stderr", "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr, start_new_session=True
        )
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


def kill_by_pidfile(pidfile: Path, marker: str) -> int | None:
    """Kill the process in ``pidfile`` if its command line carries ``marker``; return its pid."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid) or marker not in process_cmdline(pid):
        return None
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not pid_alive(pid):
            break
        time.sleep(0.02)
    return pid


def find_processes(marker: str) -> list[int]:
    """PIDs of qemu processes whose command line carries ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmd = process_cmdline(int(entry.name))
            if cmd.startswith(QEMU) and marker in cmd:
                found.append(int(entry.name))
    return found
