"""VMware metadata: a ``.vmx`` (alone, or beside its disks) read into the same ``VmMeta`` as an
OVF, and the concerns a move to KubeVirt raises from it, each with a stable code.

The VMX keys are the ones virt-v2v's own reader uses (input/parse_domain_from_vmx.ml:
``displayName``, ``numvcpus``, ``memSize``, ``firmware``, ``uefi.secureBoot.enabled``,
``scsiN:M.fileName``/``deviceType``, ``ethernetN.virtualDev``/``generatedAddress``) plus the
ones the migration toolkits' validation looks at (snapshots, changed block tracking,
independent and shared disks, raw device mappings, passthrough devices, vTPM, hot-add). As the
toolkits do, any ``critical`` concern blocks the move (``verdict.BLOCKING_PREFIXES``).
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from virtproof.premigrate.findings import Finding, Severity
from virtproof.premigrate.imagefile import BadSource

MAX_VMX_BYTES = 1024 * 1024
TARGET_MAX_DISKS = 16  # virtio-blk disks, one PCIe root port each, as a KubeVirt VM is laid out
_LINE = re.compile(r'^\s*([A-Za-z0-9_.:\-]+)\s*=\s*"([^"]*)"\s*$')
_DISK_KEY = re.compile(r"^(scsi|sata|ide|nvme)(\d+):(\d+)$")
_DELTA = re.compile(r"-\d{6}\.vmdk$", re.I)
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# guestOS ids KubeVirt cannot run (not x86_64 Linux/Windows/BSD on q35).
UNSUPPORTED_OS = re.compile(r"^(darwin|netware|solaris|os2|dos|win31|win95|win98|winme|winnt|other$)", re.I)
VIRTIO_LIKE_NICS = {"virtio", "vmxnet3", "e1000", "e1000e"}


@dataclass(frozen=True)
class MetaDisk:
    file: str
    controller: str  # pvscsi, lsilogic, sata, ide, nvme
    mode: str = "persistent"  # persistent, independent-persistent, independent-nonpersistent, nonpersistent
    shared: bool = False  # multi-writer or a shared SCSI bus
    rdm: bool = False  # raw device mapping (a LUN, not a file)
    capacity_bytes: int = 0


@dataclass(frozen=True)
class MetaNic:
    model: str
    mac: str | None
    network: str | None


@dataclass(frozen=True)
class VmMeta:
    origin: str  # "vmx" or "ovf"
    name: str
    guest_os: str | None
    cpus: int
    memory_mib: int
    firmware: str  # bios | efi
    secure_boot: bool = False
    vtpm: bool = False
    cpu_hotplug: bool = False
    memory_hotplug: bool = False
    cbt: bool = False
    snapshots: int = 0
    disks: tuple[MetaDisk, ...] = ()
    nics: tuple[MetaNic, ...] = ()
    passthrough: tuple[str, ...] = ()  # PCI, USB and host serial/parallel devices
    usb_controllers: tuple[str, ...] = field(default=())


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def read_vmx_text(path: Path) -> dict[str, str]:
    try:
        st = path.stat()
    except OSError as exc:
        raise BadSource(f"{path}: cannot read: {exc.strerror}") from None
    if st.st_size > MAX_VMX_BYTES:
        raise BadSource(f"{path}: a .vmx over {MAX_VMX_BYTES // 1024} KiB is not a VM configuration")
    data = path.read_bytes()
    if b"\0" in data:
        raise BadSource(f"{path}: binary data in a .vmx")
    return parse_vmx(data.decode("utf-8", "replace"))


def parse_vmx(text: str) -> dict[str, str]:
    """``key = "value"`` lines; keys are case-insensitive in VMware, so lower-cased here."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            out[match.group(1).lower()] = match.group(2)
    return out


def _int(value: str | None, default: int, limit: int, what: str, where: str) -> int:
    try:
        number = int(value) if value not in (None, "") else default
    except ValueError:
        raise BadSource(f"{where}: {what} {value!r} is not a number") from None
    if not 0 < number <= limit:
        raise BadSource(f"{where}: {what} {number} out of range")
    return number


def vmx_meta(vmx: dict[str, str], where: str, vmsd: dict[str, str] | None = None) -> VmMeta:
    disks: list[MetaDisk] = []
    passthrough: list[str] = []
    for key in sorted(k for k in vmx if k.endswith(".present") and _true(vmx[k])):
        dev = key[: -len(".present")]
        match = _DISK_KEY.match(dev)
        if match:
            kind = (vmx.get(f"{dev}.devicetype") or "disk").lower()
            if "cdrom" in kind or kind in ("atapi-cdrom", "cdrom-image", "cdrom-raw"):
                continue
            bus, n = match.group(1), match.group(2)
            controller = vmx.get(f"{bus}{n}.virtualdev", bus).lower() if bus == "scsi" else bus
            filename = vmx.get(f"{dev}.filename", "")
            shared_bus = vmx.get(f"{bus}{n}.sharedbus", "none").lower() not in ("none", "")
            rdm = kind in ("rawdisk", "scsi-passthru") or filename.startswith("/vmfs/devices/")
            disks.append(
                MetaDisk(
                    file=filename,
                    controller=controller,
                    mode=vmx.get(f"{dev}.mode", "persistent").lower(),
                    shared=shared_bus or vmx.get(f"{dev}.sharing", "").lower() == "multi-writer",
                    rdm=rdm,
                )
            )
        elif dev.startswith("pcipassthru"):
            passthrough.append(f"PCI device {vmx.get(dev + '.devicename') or vmx.get(dev + '.id') or dev}")
        elif re.match(r"^usb(_xhci)?:\d+$", dev):
            passthrough.append(f"USB device {vmx.get(dev + '.devicetype') or dev}")
        elif re.match(r"^(serial|parallel)\d+$", dev) and vmx.get(dev + ".filetype", "").lower() == "device":
            passthrough.append(f"host {dev} {vmx.get(dev + '.filename', '')}".strip())
    nics = []
    for key in sorted(k for k in vmx if re.match(r"^ethernet\d+\.present$", k) and _true(vmx[k])):
        dev = key[: -len(".present")]
        mac = vmx.get(f"{dev}.address") or vmx.get(f"{dev}.generatedaddress")
        nics.append(
            MetaNic(
                vmx.get(f"{dev}.virtualdev", "vlance").lower(),
                mac.lower() if mac else None,
                vmx.get(f"{dev}.networkname"),
            )
        )
    usb = tuple(c for c in ("usb", "usb_xhci", "ehci") if _true(vmx.get(f"{c}.present")))
    snapshots = _int((vmsd or {}).get("snapshot.numsnapshots"), 0, 10_000, "snapshot count", where) if vmsd else 0
    return VmMeta(
        origin="vmx",
        name=vmx.get("displayname", Path(where).stem),
        guest_os=vmx.get("guestos"),
        cpus=_int(vmx.get("numvcpus"), 1, 768, "numvcpus", where),
        memory_mib=_int(vmx.get("memsize"), 1024, 24 * 1024 * 1024, "memSize", where),
        firmware="efi" if vmx.get("firmware", "bios").lower() == "efi" else "bios",
        secure_boot=_true(vmx.get("uefi.secureboot.enabled")),
        vtpm=_true(vmx.get("vtpm.present")),
        cpu_hotplug=_true(vmx.get("vcpu.hotadd")),
        memory_hotplug=_true(vmx.get("mem.hotadd")),
        cbt=_true(vmx.get("ctkenabled")),
        snapshots=snapshots,
        disks=tuple(disks),
        nics=tuple(nics),
        passthrough=tuple(passthrough),
        usb_controllers=usb,
    )


@dataclass(frozen=True)
class VmxSource:
    meta: VmMeta
    disks: tuple[Path, ...]  # the disk files found beside the .vmx (may be empty: metadata only)
    missing: tuple[str, ...]  # disk files the .vmx names that are not there


def open_vmx(path: Path) -> VmxSource:
    """Read a ``.vmx``, its ``.vmsd`` (snapshots) and find its disks beside it. A disk path
    that leaves the .vmx's folder is never followed (it is reported, not opened)."""
    vmx = read_vmx_text(path)
    vmsd_path = path.with_suffix(".vmsd")
    vmsd = read_vmx_text(vmsd_path) if vmsd_path.is_file() else None
    meta = vmx_meta(vmx, str(path), vmsd)
    found: list[Path] = []
    missing: list[str] = []
    for disk in meta.disks:
        if disk.rdm or not disk.file:
            continue
        name = disk.file
        candidate = path.parent / name
        if "/" in name or "\\" in name or name in (".", ".."):
            missing.append(name)
            continue
        try:
            st = candidate.lstat()
        except OSError:
            missing.append(name)
            continue
        if not stat.S_ISREG(st.st_mode):
            raise BadSource(f"{path}: refused: disk {name!r} is a link or special file")
        found.append(candidate)
    return VmxSource(meta, tuple(found), tuple(missing))


def _f(code: str, severity: Severity, message: str, fix: str = "") -> Finding:
    return Finding(f"vmware-{code}", severity, message, fix)


def concerns(meta: VmMeta, k8s_name: str) -> list[Finding]:
    """The concerns of a VM's VMware configuration for a move to KubeVirt."""
    out = [
        _f(
            "hardware",
            "info",
            f"{meta.origin.upper()} {meta.name!r}: {meta.cpus} vCPU, {meta.memory_mib} MiB, firmware {meta.firmware}"
            f"{' with Secure Boot' if meta.secure_boot else ''}, guest OS {meta.guest_os or 'not given'}, "
            f"{len(meta.disks)} disk(s), {len(meta.nics)} NIC(s)",
        )
    ]
    if meta.snapshots:
        out.append(
            _f(
                "snapshots",
                "critical",
                f"{meta.snapshots} snapshot(s): the disks are a chain of deltas",
                "delete or consolidate the snapshots before exporting",
            )
        )
    deltas = [d.file for d in meta.disks if _DELTA.search(d.file)]
    if deltas:
        out.append(
            _f(
                "snapshot-delta-disk",
                "critical",
                f"disk {', '.join(deltas)} is a snapshot delta, not a full disk",
                "consolidate the snapshots so that each disk is one file",
            )
        )
    out.append(
        _f("cbt", "info", "changed block tracking is on: a warm (incremental) migration can use it")
        if meta.cbt
        else _f("cbt-off", "info", "changed block tracking is off: only a cold migration, or turn on ctkEnabled")
    )
    for disk in meta.disks:
        if disk.rdm:
            out.append(
                _f(
                    "rdm",
                    "critical",
                    f"disk {disk.file or '(raw device)'} is a raw device mapping (a LUN)",
                    "copy the LUN's data to a virtual disk, or present the LUN to the cluster as a PVC",
                )
            )
        if disk.mode.startswith("independent"):
            out.append(
                _f(
                    "independent-disk",
                    "critical",
                    f"disk {disk.file} is {disk.mode}: snapshots skip it, so a "
                    "warm copy or a consistent export does not include it",
                    "make it a dependent disk",
                )
            )
        if disk.shared:
            out.append(
                _f(
                    "shared-disk",
                    "critical",
                    f"disk {disk.file} is shared (multi-writer or a shared SCSI bus)",
                    "shared disks (clusters) need a ReadWriteMany block PVC set up by hand",
                )
            )
    if len(meta.disks) > TARGET_MAX_DISKS:
        out.append(
            _f(
                "too-many-disks",
                "critical",
                f"{len(meta.disks)} disks: more than the {TARGET_MAX_DISKS} the target VM layout takes",
                "merge or drop disks",
            )
        )
    for device in meta.passthrough:
        severity: Severity = "warning" if device.startswith("USB") else "critical"
        out.append(
            _f(
                "passthrough",
                severity,
                f"{device} is passed through from the ESXi host",
                "the device does not move; plan a host device or remove it",
            )
        )
    if meta.vtpm:
        out.append(
            _f(
                "vtpm",
                "warning",
                "a virtual TPM: its keys (BitLocker, measured boot) do not move",
                "suspend BitLocker or re-seal; the VM gets a new persistent vTPM",
            )
        )
    if meta.secure_boot:
        out.append(_f("secure-boot", "info", "UEFI Secure Boot is on: the VM gets efi.secureBoot and SMM"))
    if meta.cpu_hotplug or meta.memory_hotplug:
        what = " and ".join(w for w, on in (("CPU", meta.cpu_hotplug), ("memory", meta.memory_hotplug)) if on)
        out.append(
            _f(
                "hotplug",
                "warning",
                f"{what} hot-add is on: not carried over",
                "set maxSockets/maxGuest in the VM if it is needed",
            )
        )
    if not K8S_NAME.match(meta.name) or len(meta.name) > 63:
        out.append(
            _f(
                "name",
                "warning",
                f"VM name {meta.name!r} is not a valid Kubernetes name: it becomes {k8s_name!r}",
                "check that nothing looks the VM up by its old name",
            )
        )
    for nic in meta.nics:
        severity = "info" if nic.model in VIRTIO_LIKE_NICS else "warning"
        out.append(
            _f(
                "nic-model",
                severity,
                f"NIC {nic.model} {nic.mac or '(no MAC)'} on {nic.network or '?'} becomes virtio-net",
            )
        )
    os_id = meta.guest_os or ""
    if os_id and UNSUPPORTED_OS.match(os_id):
        out.append(_f("guest-os", "critical", f"guest OS {os_id!r} does not run on KubeVirt"))
    elif os_id and not re.search(r"64", os_id) and os_id.lower() not in ("windows9", "windows2019srv"):
        out.append(_f("guest-os-32bit", "warning", f"guest OS {os_id!r} looks 32-bit"))
    return out
