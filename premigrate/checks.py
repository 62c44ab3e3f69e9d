"""Rules: from inspection facts to findings (pure; no guest access)."""

from __future__ import annotations

import re
from typing import Literal

from virtproof.premigrate.findings import Finding, Severity, sort_findings
from virtproof.premigrate.imagefile import FORMAT_NAMES, ImageFacts
from virtproof.premigrate.inspect import GuestFacts, Inspection
from virtproof.premigrate.windows import windows_findings

DiskBus = Literal["virtio", "scsi"]
Target = Literal["qemu", "kubevirt"]
_OLD_DISK = re.compile(r"^/dev/(sd[a-z]+|hd[a-z]+|xvd[a-z]+)\d*$")


def disk_driver(bus: DiskBus) -> str:
    return "virtio_blk" if bus == "virtio" else "virtio_scsi"


def image_findings(image: ImageFacts) -> list[Finding]:
    mib = 1024 * 1024
    out = [
        Finding(
            "image-format",
            "info",
            f"{FORMAT_NAMES.get(image.format, image.format)}"
            f"{' (' + image.subformat + ')' if image.subformat else ''}, "
            f"{image.virtual_size // mib} MiB virtual, {image.actual_size // mib} MiB allocated",
        ),
    ]
    if image.backing_chain:
        out.append(
            Finding(
                "backing-chain",
                "warning",
                f"the image has a backing chain: {' -> '.join(image.backing_chain)}",
                "conversion flattens it; import the converted disk, not the chain",
                True,
            )
        )
    if image.encrypted:
        out.append(
            Finding(
                "encrypted",
                "critical",
                "the image is encrypted: it cannot be inspected or converted",
                "decrypt it first (qemu-img convert with --object secret)",
            )
        )
    if image.stream_optimized:
        out.append(
            Finding(
                "stream-optimized",
                "info",
                "streamOptimized VMDK (compressed): it is read-only to hypervisors",
                "conversion to qcow2/raw is required and done",
                True,
            )
        )
    return out


def guest_findings(facts: GuestFacts, bus: DiskBus, target: Target) -> list[Finding]:
    out: list[Finding] = []
    if facts.os_type == "windows":
        if facts.windows is None:
            return [Finding("unsupported-os", "critical", f"Windows ({facts.product}): its registry is unreadable")]
        return [*windows_findings(facts.windows, bus, facts.firmware), *_firmware_findings(facts, target)]
    if facts.os_type != "linux":
        return [Finding("unsupported-os", "critical", f"unsupported OS type {facts.os_type!r}")]
    out.append(
        Finding(
            "os",
            "info",
            f"{facts.product} ({facts.distro} {facts.version}, {facts.arch}), "
            f"hostname {facts.hostname or '?'}, kernel {facts.kernel_version or '?'}, init {facts.init_system}",
        )
    )
    if facts.arch not in ("x86_64", "amd64"):
        out.append(Finding("arch", "critical", f"architecture {facts.arch} is not x86_64"))
    out.extend(_firmware_findings(facts, target))
    if facts.boot.loader == "none":
        out.append(Finding("no-bootloader", "warning", "no extlinux or GRUB configuration found"))
    driver = disk_driver(bus)
    needed = ["virtio_pci", driver, "virtio_net"]
    for module in needed:
        state = facts.modules.get(module, "missing")
        if state == "missing":
            out.append(
                Finding(
                    f"driver-missing-{module}",
                    "critical",
                    f"kernel {facts.kernel_version} has no {module} (neither built in nor a module)",
                    "install a kernel with virtio drivers before the move",
                )
            )
    for module in ("virtio_pci", driver):
        state = facts.modules.get(module, "missing")
        if state == "module" and module not in facts.initramfs_modules:
            where = facts.initramfs_path or "no initramfs found"
            out.append(
                Finding(
                    f"initramfs-missing-{module}",
                    "critical",
                    f"{module} is a module but not in the initramfs ({where}): "
                    f"the root disk will not be found on {bus}",
                    f"add {module} to the initramfs and rebuild it",
                    facts.initramfs_tool != "none",
                )
            )
    if facts.initramfs_error:
        out.append(
            Finding("initramfs-unreadable", "warning", f"cannot list {facts.initramfs_path}: {facts.initramfs_error}")
        )
    for entry in facts.fstab:
        if _OLD_DISK.match(entry.spec):
            out.append(
                Finding(
                    "fstab-device-name",
                    "critical",
                    f"/etc/fstab mounts {entry.mountpoint} from {entry.spec}: on virtio-blk disks are /dev/vdX",
                    f"use UUID= or LABEL= for {entry.mountpoint}",
                    True,
                )
            )
    root = facts.boot.root_spec
    if root and _OLD_DISK.match(root):
        out.append(
            Finding(
                "bootloader-device-name",
                "critical",
                f"the boot loader passes root={root} ({facts.boot.config_path}): on virtio-blk it is /dev/vdX",
                "pass root=UUID=...",
                True,
            )
        )
    out.extend(_network_findings(facts))
    if "qemu-guest-agent" not in facts.agents:
        out.append(
            Finding(
                "no-qemu-guest-agent",
                "warning" if target == "kubevirt" else "info",
                "qemu-guest-agent is not installed: KubeVirt's AgentConnected condition and guest info will be missing",
                "install qemu-guest-agent in the guest",
            )
        )
    for tools in ("vmware-tools", "hyperv-daemons"):
        if tools in facts.agents:
            out.append(
                Finding(
                    f"{tools}-present",
                    "warning",
                    f"{tools} installed: useless after the move",
                    f"remove {tools} after the move",
                )
            )
    return out


def _firmware_findings(facts: GuestFacts, target: Target) -> list[Finding]:
    if facts.firmware != "uefi":
        return [
            Finding(
                "firmware-bios",
                "info",
                f"BIOS boot ({facts.partition_table} partition table, {facts.boot.loader} boot loader)",
            )
        ]
    loaders = ", ".join(facts.efi_loaders[:4]) or "no EFI binaries found"
    secure = (
        "Secure Boot can stay on (a signed shim or Windows boot manager is there)"
        if facts.secure_boot_ready
        else "Secure Boot must be off (the boot loader is not signed: no shim)"
    )
    return [
        Finding(
            "firmware-uefi",
            "info" if target == "qemu" else "warning",
            f"UEFI boot (an EFI system partition: {loaders}); {secure}",
            "the VirtualMachine needs spec.domain.firmware.bootloader.efi (generated, secureBoot as the source has it)",
        )
    ]


def secure_boot_findings(source_secure_boot: bool, facts: GuestFacts | None) -> list[Finding]:
    """The source's Secure Boot setting (VMware's ``uefi.secureBoot.enabled``) against what is on
    the disk. The VirtualMachine keeps the setting (``efi.secureBoot: true``, OVMF with
    Microsoft's keys enrolled, as KubeVirt gives it); a boot loader that is not signed (no shim,
    no Windows boot manager) is then refused by the firmware: the VM cannot boot."""
    if not source_secure_boot or facts is None or facts.firmware != "uefi" or facts.secure_boot_ready:
        return []
    loaders = ", ".join(facts.efi_loaders[:4]) or "no EFI binaries"
    return [
        Finding(
            "secure-boot-unsigned-loader",
            "critical",
            f"the source VM has Secure Boot on, but the EFI system partition has no signed shim or Windows "
            f"boot manager ({loaders}): the VirtualMachine, generated with efi.secureBoot: true, "
            "would not boot (the firmware refuses an unsigned boot loader)",
            "turn Secure Boot off in the source VM before the move (the VM is then generated with "
            "secureBoot: false), or install the signed shim and boot loader in the guest (shim-signed, "
            "grub-efi-amd64-signed on Debian)",
        )
    ]


def _network_findings(facts: GuestFacts) -> list[Finding]:
    nics = [n for n in facts.nics if n.configures_ip]
    if not facts.nics:
        return [
            Finding(
                "network-none",
                "info" if facts.init_system == "micro" else "warning",
                "no network configuration found in the guest"
                + (" (the micro guest configures eth0 itself)" if facts.init_system == "micro" else ""),
            )
        ]
    out: list[Finding] = []
    portable = [n for n in nics if n.matches_target(facts.eth_names)]
    for nic in facts.nics:
        if nic.mac and nic.name is None:
            # A configuration that gives the address by MAC leaves the guest offline unless the
            # MAC is kept; a rename rule by MAC (udev, .link) only changes the name.
            critical = nic.configures_ip and not portable
            out.append(
                Finding(
                    "network-mac-bound",
                    "critical" if critical else "warning",
                    f"{nic.path} ({nic.tool}) is bound to MAC {nic.mac}: the virtio NIC has another MAC unless "
                    "it is kept, so it gets no network",
                    "keep the MAC in the VM (--keep-mac) or match the interface by name",
                    True,
                )
            )
        elif not nic.matches_target(facts.eth_names):
            severity: Severity = "warning" if portable else "critical"
            out.append(
                Finding(
                    "network-name-pinned",
                    severity,
                    f"{nic.path} ({nic.tool}) configures interface {nic.name!r}: the virtio NIC will be "
                    "named differently (enp1s0 on q35), so it gets no network",
                    "match any en*/eth* interface (or the new name)",
                    True,
                )
            )
    return out


def findings_for(inspection: Inspection, bus: DiskBus, target: Target) -> list[Finding]:
    out = image_findings(inspection.image)
    if inspection.guest is None:
        if not inspection.image.encrypted:
            out.append(Finding("no-os", "critical", f"inspection failed: {inspection.error}"))
    else:
        out.extend(guest_findings(inspection.guest, bus, target))
    return sort_findings(out)
