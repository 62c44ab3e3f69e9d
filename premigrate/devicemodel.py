"""The devices a KubeVirt VirtualMachine gets, read from the VM object virtproof generates, and
the qemu configuration (the lab's own launcher) that gives a boot proof exactly those.

What KubeVirt's virt-launcher turns a VMI into, and what we mirror here:

- ``machine.type`` q35 -> ``-machine q35``;
- ``firmware.bootloader.bios`` -> SeaBIOS; ``efi`` -> OVMF as two pflash drives, the code
  read-only and a per-VMI copy of the variable store (pkg/virt-launcher/virtwrap/efi/efi.go:
  OVMF_CODE.fd / OVMF_VARS.fd, or OVMF_CODE.secboot.fd / OVMF_VARS.secboot.fd with
  ``secureBoot``, which also needs ``features.smm``). Debian's ``ovmf`` package ships the same
  builds as OVMF_CODE_4M(.secboot).fd and OVMF_VARS_4M(.ms).fd;
- graphics: a VGA device unless ``autoattachGraphicsDevice: false``
  (pkg/virt-launcher/virtwrap/converter/compute/graphics.go: ``vga`` on amd64, ``bochs`` for EFI
  guests only with the BochsDisplayForEFIGuests cluster option, or ``devices.video.type``);
- a serial console unless ``autoattachSerialConsole: false``; a memory balloon unless
  ``autoattachMemBalloon: false``; ``rng`` -> virtio-rng;
- disks by ``disk.bus`` (virtio -> virtio-blk-pci; scsi -> scsi-hd on virtio-scsi; sata ->
  ide-hd on the q35 AHCI), interfaces by ``model`` (virtio-net-pci by default), each PCI device
  behind its own PCIe root port as libvirt places them on q35, NICs first.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from virtproof.lab.qemu.process import Disk, Firmware, QemuConfig, UserNic

DiskBus = Literal["virtio", "scsi", "sata"]
NicModel = Literal["virtio", "e1000", "vmxnet3"]
OVMF_DIR = Path("/usr/share/OVMF")
# (code, vars) per Secure Boot setting; the first pair that exists is used.
OVMF_BUILDS: dict[bool, tuple[tuple[str, str], ...]] = {
    False: (("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd")),
    True: (("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"), ("OVMF_CODE.secboot.fd", "OVMF_VARS.ms.fd")),
}
VIDEO_DEVICES = {"vga": "VGA", "bochs": "bochs-display", "virtio": "virtio-vga", "cirrus": "cirrus-vga"}


class DeviceModelError(ValueError):
    """The VM object asks for something the boot proof cannot give (named in the message)."""


@dataclass(frozen=True)
class DeviceModel:
    machine: str
    firmware: Literal["bios", "uefi"]
    secure_boot: bool
    video: str | None  # a qemu -device name, or None without graphics
    serial: bool
    balloon: bool
    rng: bool
    disk_bus: DiskBus
    nic_model: NicModel
    mac: str | None
    cpus: int
    memory_mib: int

    def describe(self) -> str:
        fw = "UEFI (OVMF" + (", Secure Boot)" if self.secure_boot else ")") if self.firmware == "uefi" else "BIOS"
        return (
            f"{self.machine}, {fw}, disk {self.disk_bus}, NIC {self.nic_model}, "
            f"graphics {self.video or 'none'}, serial {'yes' if self.serial else 'no'}, "
            f"rng {'yes' if self.rng else 'no'}"
        )


def _mib(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024, "M": 1, "G": 1000, "Ki": 1 / 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(int(quantity) / 1024**2)


def device_model(vm: dict[str, Any]) -> DeviceModel:
    """Read the devices from a ``kubevirt.io/v1`` VirtualMachine (as ``manifests`` makes it)."""
    try:
        domain = vm["spec"]["template"]["spec"]["domain"]
    except (KeyError, TypeError):
        raise DeviceModelError("not a VirtualMachine: no spec.template.spec.domain") from None
    devices = domain.get("devices", {})
    bootloader = domain.get("firmware", {}).get("bootloader", {})
    efi = bootloader.get("efi")
    secure = bool(efi.get("secureBoot", True)) if isinstance(efi, dict) else False  # KubeVirt's default: on
    machine = domain.get("machine", {}).get("type", "q35")
    if not machine.startswith(("q35", "pc-q35")):
        raise DeviceModelError(f"machine type {machine!r}: the boot proof gives q35 only")
    video = None
    if devices.get("autoattachGraphicsDevice", True):
        kind = (devices.get("video") or {}).get("type", "vga")
        if kind not in VIDEO_DEVICES:
            raise DeviceModelError(f"video type {kind!r} is not one the boot proof knows")
        video = VIDEO_DEVICES[kind]
    disks = devices.get("disks", [])
    if not disks:
        raise DeviceModelError("the VM has no disk")
    bus = next(iter(d for d in disks if d.get("bootOrder") == 1), disks[0]).get("disk", {}).get("bus", "virtio")
    if bus not in ("virtio", "scsi", "sata"):
        raise DeviceModelError(f"disk bus {bus!r} is not one the boot proof gives")
    interfaces = devices.get("interfaces", [])
    model_name = interfaces[0].get("model", "virtio") if interfaces else "virtio"
    models: dict[str, NicModel] = {"virtio": "virtio", "e1000": "e1000", "vmxnet3": "vmxnet3"}
    if model_name not in models:
        raise DeviceModelError(f"interface model {model_name!r} is not one the boot proof gives")
    model = models[model_name]
    cpu = domain.get("cpu", {})
    memory = domain.get("memory", {}).get("guest") or domain.get("resources", {}).get("requests", {}).get("memory")
    return DeviceModel(
        machine="q35",
        firmware="uefi" if efi is not None else "bios",
        secure_boot=secure and efi is not None,
        video=video,
        serial=bool(devices.get("autoattachSerialConsole", True)),
        balloon=bool(devices.get("autoattachMemBalloon", True)),
        rng="rng" in devices,
        disk_bus=bus,
        nic_model=model,
        mac=interfaces[0].get("macAddress") if interfaces else None,
        cpus=int(cpu.get("cores", 1)) * int(cpu.get("sockets", 1)) * int(cpu.get("threads", 1)),
        memory_mib=_mib(str(memory)) if memory else 1024,
    )


def ovmf_pair(secure_boot: bool) -> tuple[Path, Path]:
    for code, vars_ in OVMF_BUILDS[secure_boot]:
        if (OVMF_DIR / code).exists() and (OVMF_DIR / vars_).exists():
            return OVMF_DIR / code, OVMF_DIR / vars_
    from virtproof.core.errors import LabUnavailable

    raise LabUnavailable(f"no OVMF firmware in {OVMF_DIR} (apt-get install ovmf)")


def qemu_config(
    model: DeviceModel,
    disk: Path,
    fmt: str,
    directory: Path,
    *,
    name: str,
    ssh_port: int,
    cpus: int | None = None,
    memory_mib: int | None = None,
) -> QemuConfig:
    """The lab launcher's config for ``model`` booting ``disk``; UEFI gets a fresh copy of the
    variable store in ``directory`` (qemu writes to it; the next boot starts clean)."""
    firmware = None
    if model.firmware == "uefi":
        code, vars_template = ovmf_pair(model.secure_boot)
        directory.mkdir(parents=True, exist_ok=True)
        vars_copy = directory / "OVMF_VARS.fd"
        shutil.copyfile(vars_template, vars_copy)
        firmware = Firmware(code, vars_copy, model.secure_boot)
    return QemuConfig(
        guest_name=name,
        directory=directory,
        cpus=cpus or model.cpus,
        memory_mib=memory_mib or model.memory_mib,
        machine=model.machine,
        accel="tcg",
        disks=(Disk(disk, fmt, model.disk_bus, snapshot=True, boot_index=1),),  # type: ignore[arg-type]
        nics=(UserNic("127.0.0.1", ((ssh_port, 22),), model=model.nic_model, mac=model.mac),),
        rng=model.rng,
        start_paused=False,
        pcie_root_ports=True,
        graphics=model.video is not None,
        video_model=model.video or "VGA",
        firmware=firmware,
        balloon=model.balloon,
        no_reboot=False,
    )
