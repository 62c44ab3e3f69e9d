"""OVA/OVF sources: read the OVF's virtual hardware, verify the manifest, extract the disks.

An OVA is a tar holding the ``.ovf`` descriptor, an optional ``.mf`` manifest
(``SHA256(file)= hex`` or SHA1) and the disk files (usually streamOptimized VMDK).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from virtproof.premigrate.findings import Finding
from virtproof.premigrate.imagefile import BadSource
from virtproof.premigrate.vmware import MetaDisk, MetaNic, VmMeta

NS = {
    "ovf": "http://schemas.dmtf.org/ovf/envelope/1",
    "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    "vmw": "http://www.vmware.com/schema/ovf",
}
OVF = "{{{}}}".format(NS["ovf"])
RASD = "{{{}}}".format(NS["rasd"])
VMW = "{{{}}}".format(NS["vmw"])
EPASD = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData}"
_UNITS = {
    "byte": 1,
    "byte * 2^10": 1024,
    "byte * 2^20": 1024**2,
    "byte * 2^30": 1024**3,
    "KB": 1024,
    "MB": 1024**2,
    "GB": 1024**3,
}


@dataclass(frozen=True)
class OvfNic:
    model: str  # vmxnet3, e1000, ...
    mac: str | None
    network: str | None


@dataclass(frozen=True)
class OvfDisk:
    disk_id: str
    file: str
    capacity_bytes: int
    controller: str  # pvscsi, lsilogic, ide, sata, ...
    mode: str = "persistent"  # vmw:Config backing.diskMode
    shared: bool = False  # vmw:Config backing.sharing = sharingMultiWriter


@dataclass(frozen=True)
class OvfInfo:
    name: str
    cpus: int
    memory_mib: int
    firmware: str  # bios | efi
    disks: tuple[OvfDisk, ...]
    nics: tuple[OvfNic, ...]
    os_type: str | None
    config: tuple[tuple[str, str], ...] = ()  # the VirtualHardwareSection's vmw:Config key/values
    devices: tuple[str, ...] = ()  # other Items: USB controllers, vTPM, passthrough (ResourceSubType)


@dataclass(frozen=True)
class ManifestCheck:
    algorithm: str | None
    verified: tuple[str, ...]
    mismatched: tuple[str, ...]
    missing: tuple[str, ...]  # named in the manifest but absent from the archive
    unlisted: tuple[str, ...]  # in the archive but not in the manifest


MAX_OVF_BYTES = 8 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_MEMBERS = 512
MAX_CAPACITY = 64 * 1024**4  # bytes; as imagefile.MAX_VIRTUAL_BYTES


def _capacity(value: str, units: str | None) -> int:
    factor = _UNITS.get((units or "byte").strip(), 1)
    number = float(value)
    if not 0 <= number * factor <= MAX_CAPACITY:
        raise ValueError(f"capacity {value} {units or 'byte'} out of range")
    return int(number) * factor


def _count(value: str | None, default: int, limit: int, what: str) -> int:
    number = int(value) if value is not None else default
    if not 0 < number <= limit:
        raise ValueError(f"{what} {number} out of range (1..{limit})")
    return number


def parse_ovf(text: str, where: str = "OVF") -> OvfInfo:
    """The OVF's virtual hardware. Anything malformed is a ``BadSource`` naming ``where``."""
    if len(text) > MAX_OVF_BYTES:
        raise BadSource(f"{where}: OVF descriptor over {MAX_OVF_BYTES // 1024**2} MiB")
    if re.search(r"<!(DOCTYPE|ENTITY)", text):
        raise BadSource(f"{where}: refused: the OVF declares a DOCTYPE or entities (never in a real OVF)")
    try:
        return _parse_ovf(text, where)
    except (ValueError, OverflowError, TypeError) as exc:
        raise BadSource(f"{where}: bad OVF value: {exc}") from None
    except RecursionError:
        raise BadSource(f"{where}: OVF nested too deeply") from None


def _parse_ovf(text: str, where: str) -> OvfInfo:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise BadSource(f"{where}: not valid OVF XML: {exc}") from None
    files = {f.get(OVF + "id"): f.get(OVF + "href", "") for f in root.iterfind("ovf:References/ovf:File", NS)}
    disks_by_id: dict[str, tuple[str, int]] = {}
    for disk in root.iterfind("ovf:DiskSection/ovf:Disk", NS):
        disk_id = disk.get(OVF + "diskId", "")
        cap = _capacity(disk.get(OVF + "capacity", "0"), disk.get(OVF + "capacityAllocationUnits"))
        disks_by_id[disk_id] = (files.get(disk.get(OVF + "fileRef"), ""), cap)
    system = root.find("ovf:VirtualSystem", NS)
    if system is None:
        raise BadSource(f"{where}: OVF has no VirtualSystem")
    name = system.get(OVF + "id") or "vm"
    os_section = system.find("ovf:OperatingSystemSection", NS)
    os_type = os_section.get(VMW + "osType") if os_section is not None else None
    cpus, memory, firmware = 1, 1024, "bios"
    controllers: dict[str, str] = {}
    disks: list[OvfDisk] = []
    nics: list[OvfNic] = []
    hardware = system.find("ovf:VirtualHardwareSection", NS)
    if hardware is None:
        raise BadSource(f"{where}: OVF has no VirtualHardwareSection")
    config: list[tuple[str, str]] = []
    devices: list[str] = []
    for item_config in hardware.iterfind("vmw:Config", NS):
        key, value = item_config.get(VMW + "key", ""), item_config.get(VMW + "value", "")
        config.append((key, value))
        if key == "firmware":
            firmware = value or "bios"
    items = list(hardware.iterfind("ovf:Item", NS)) + list(hardware.iterfind("ovf:EthernetPortItem", NS))
    for item in items:

        def field(tag: str, item: ET.Element = item) -> str | None:
            el = item.find(RASD + tag)
            if el is None:
                el = item.find(EPASD + tag)
            return el.text.strip() if el is not None and el.text else None

        kind = field("ResourceType")
        if kind == "3":
            cpus = _count(field("VirtualQuantity"), 1, 1024, "vCPU count")
        elif kind == "4":
            memory = _capacity(field("VirtualQuantity") or "1024", field("AllocationUnits") or "byte * 2^20") // 1024**2
            memory = _count(str(memory), 1024, 64 * 1024**2, "memory MiB")
        elif kind in ("5", "6", "20"):
            sub = (field("ResourceSubType") or {"5": "ide", "6": "scsi", "20": "sata"}[kind]).lower()
            controllers[field("InstanceID") or ""] = {
                "virtualscsi": "pvscsi",
                "vmware.sata.ahci": "sata",
                "ahci": "sata",
            }.get(sub, sub)
        elif kind == "10":
            mac = field("Address")
            nics.append(
                OvfNic(
                    (field("ResourceSubType") or "unknown").lower(), mac.lower() if mac else None, field("Connection")
                )
            )
        elif kind == "17":
            ref = (field("HostResource") or "").rsplit("/", 1)[-1]
            file, cap = disks_by_id.get(ref, ("", 0))
            backing = {c.get(VMW + "key", ""): c.get(VMW + "value", "") for c in item.iterfind("vmw:Config", NS)}
            mode = backing.get("backing.diskMode", "persistent").replace("_", "-").lower()
            shared = backing.get("backing.sharing", "").lower() == "sharingmultiwriter"
            disks.append(OvfDisk(ref, file, cap, controllers.get(field("Parent") or "", "unknown"), mode, shared))
        elif kind in ("1", "23", "24", "25") or (field("ResourceSubType") or "").startswith("vmware."):
            devices.append((field("ResourceSubType") or f"type {kind}").lower())
    return OvfInfo(name, cpus, memory, firmware, tuple(disks), tuple(nics), os_type, tuple(config), tuple(devices))


def ovf_meta(info: OvfInfo) -> VmMeta:
    """The OVF's VMware configuration as the ``VmMeta`` the concerns are read from."""
    config = {k.lower(): v for k, v in info.config}

    def on(key: str) -> bool:
        return config.get(key.lower(), "").lower() == "true"

    passthrough = tuple(
        f"{'USB' if 'usb' in d and 'controller' not in d else 'PCI'} device {d}"
        for d in info.devices
        if "pcipassthrough" in d or d in ("vmware.usb.device", "usb")
    )
    return VmMeta(
        origin="ovf",
        name=info.name,
        guest_os=info.os_type,
        cpus=info.cpus,
        memory_mib=info.memory_mib,
        firmware=info.firmware,
        secure_boot=on("uefi.secureBoot.enabled") or on("bootOptions.efiSecureBootEnabled"),
        vtpm=any("vtpm" in d for d in info.devices),
        cpu_hotplug=on("cpuHotAddEnabled"),
        memory_hotplug=on("memoryHotAddEnabled"),
        cbt=on("changeTrackingEnabled"),
        disks=tuple(MetaDisk(d.file, d.controller, d.mode, d.shared, False, d.capacity_bytes) for d in info.disks),
        nics=tuple(MetaNic(n.model, n.mac, n.network) for n in info.nics),
        passthrough=passthrough,
        usb_controllers=tuple(d for d in info.devices if "usb" in d and "controller" in d),
    )


_MF = re.compile(r"^(SHA256|SHA1|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo, algorithm: str) -> str:
    digest = hashlib.new(algorithm.lower())
    fh = tar.extractfile(member)
    if fh is None:
        return ""
    while block := fh.read(4 * 1024 * 1024):
        digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class OvaContents:
    ovf_name: str
    ovf: OvfInfo
    manifest: ManifestCheck
    disks: tuple[Path, ...]  # extracted into the work dir, in OVF order


def safe_members(tar: tarfile.TarFile, where: Path, archive_bytes: int) -> dict[str, tarfile.TarInfo]:
    """The archive's files by name; refuses (``BadSource``) any member an OVA never has: a path
    with ``..`` or a leading ``/``, a link, a device or FIFO, a sparse member, sizes past the
    archive's own (an uncompressed tar cannot hold more than itself)."""
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    for count, member in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise BadSource(f"{where}: more than {MAX_MEMBERS} members: not an OVA")
        name = member.name
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
            raise BadSource(f"{where}: refused: member {name!r} points outside the archive")
        if member.issym() or member.islnk():
            raise BadSource(f"{where}: refused: member {name!r} is a link (to {member.linkname!r})")
        if member.isdir():
            continue
        if not member.isfile():
            raise BadSource(f"{where}: refused: member {name!r} is a device, FIFO or special file")
        if member.issparse():
            raise BadSource(f"{where}: refused: member {name!r} is a sparse tar member (expands past the archive)")
        if member.offset_data + member.size > archive_bytes:
            raise BadSource(f"{where}: member {name!r} is truncated: the archive ends inside it")
        total += member.size
        if total > archive_bytes:
            raise BadSource(f"{where}: members claim {total} bytes, more than the archive holds ({archive_bytes})")
        clean = "/".join(p for p in parts if p not in ("", "."))
        if clean in members:
            raise BadSource(f"{where}: member {clean!r} appears twice")
        members[clean] = member
    return members


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int, where: str) -> bytes:
    if member.size > limit:
        raise BadSource(f"{where}: {member.name} is {member.size} bytes, more than {limit} for its kind")
    fh = tar.extractfile(member)
    if fh is None:
        raise BadSource(f"{where}: {member.name} cannot be read")
    return fh.read(limit + 1)


def open_ova(path: Path, workdir: Path) -> OvaContents:
    """Read the OVF, check the manifest, extract the disks into ``workdir`` (and nowhere else:
    members are read as streams, never extracted by name)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise BadSource(f"{path}: cannot read: {exc.strerror}") from None
    if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
        raise BadSource(f"{path}: a compressed OVA: decompress it first (an OVA is a plain tar)")
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise BadSource(f"{path}: not an OVA (tar) archive: {exc}") from None
    try:
        with tar:
            return _read_ova(path, tar, workdir)
    except (tarfile.TarError, EOFError) as exc:
        raise BadSource(f"{path}: a truncated or corrupt OVA: {exc}") from None


def _check_disk_name(path: Path, name: str) -> None:
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise BadSource(f"{path}: refused: the OVF names disk file {name!r}, not a file of the archive")


def check_ova(path: Path) -> OvfInfo:
    """The checks of ``open_ova`` that need no extraction: members, OVF (for a precheck)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
            raise BadSource(f"{path}: a compressed OVA: decompress it first (an OVA is a plain tar)")
        with tarfile.open(path, "r:") as tar:
            members = safe_members(tar, path, path.stat().st_size)
            ovf_names = [n for n in members if n.endswith(".ovf")]
            if not ovf_names:
                raise BadSource(f"{path}: OVA holds no .ovf descriptor")
            ovf_bytes = _read_member(tar, members[ovf_names[0]], MAX_OVF_BYTES, str(path))
            info = parse_ovf(ovf_bytes.decode("utf-8", "replace"), f"{path}:{ovf_names[0]}")
            for disk in info.disks:
                _check_disk_name(path, disk.file)
                if disk.file not in members:
                    raise BadSource(f"{path}: the OVF names disk file {disk.file!r} that the archive does not hold")
            if not info.disks:
                raise BadSource(f"{path}: the OVF names no disk")
            return info
    except OSError as exc:
        raise BadSource(f"{path}: cannot read: {exc.strerror}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise BadSource(f"{path}: not an OVA (tar) archive, or a truncated one: {exc}") from None


def _read_ova(path: Path, tar: tarfile.TarFile, workdir: Path) -> OvaContents:
    members = safe_members(tar, path, path.stat().st_size)
    ovf_names = [n for n in members if n.endswith(".ovf")]
    if not ovf_names:
        raise BadSource(f"{path}: OVA holds no .ovf descriptor")
    ovf_bytes = _read_member(tar, members[ovf_names[0]], MAX_OVF_BYTES, str(path))
    info = parse_ovf(ovf_bytes.decode("utf-8", "replace"), f"{path}:{ovf_names[0]}")
    manifest = _check_manifest(tar, members, str(path))
    out: list[Path] = []
    for disk in info.disks:
        _check_disk_name(path, disk.file)
        member = members.get(disk.file)
        if member is None:
            raise BadSource(f"{path}: the OVF names disk file {disk.file!r} that the archive does not hold")
        target = workdir / f"disk{len(out)}-{disk.file}"
        src = tar.extractfile(member)
        if src is None:
            raise BadSource(f"{path}: {disk.file} cannot be read")
        with open(target, "xb") as dst:
            shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
        if target.stat().st_size != member.size:
            raise BadSource(f"{path}: {disk.file} is truncated in the archive")
        out.append(target)
    return OvaContents(ovf_names[0], info, manifest, tuple(out))


def _check_manifest(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], where: str) -> ManifestCheck:
    mf_names = [n for n in members if n.endswith(".mf")]
    if not mf_names:
        return ManifestCheck(None, (), (), (), tuple(members))
    text = _read_member(tar, members[mf_names[0]], MAX_MANIFEST_BYTES, where).decode("utf-8", "replace")
    entries: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        match = _MF.match(line.strip())
        if match:
            entries[match.group(2)] = (match.group(1), match.group(3).lower())
    verified, mismatched, missing = [], [], []
    algorithm = None
    for name, (algo, expected) in entries.items():
        algorithm = algo
        member = members.get(name)
        if member is None:
            missing.append(name)
        elif _hash_member(tar, member, algo) == expected:
            verified.append(name)
        else:
            mismatched.append(name)
    unlisted = tuple(n for n in members if n not in entries and n != mf_names[0] and not n.endswith(".cert"))
    return ManifestCheck(algorithm, tuple(verified), tuple(mismatched), tuple(missing), unlisted)


def print_source(path: Path, timeout: float = 60) -> tuple[bool, str]:
    """``virt-v2v -i ova PATH --print-source``: virt-v2v's own reading (and manifest check)."""
    if shutil.which("virt-v2v") is None:
        return False, "virt-v2v is not installed"
    from virtproof.premigrate.gfs import guestfs_environment

    guestfs_environment()
    proc = subprocess.run(
        ["virt-v2v", "-i", "ova", str(path), "--print-source"],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def ova_findings(contents: OvaContents, print_source_ok: bool | None, print_source_text: str) -> list[Finding]:
    ovf, mf = contents.ovf, contents.manifest
    out = [
        Finding(
            "ovf-hardware",
            "info",
            f"OVF {contents.ovf_name}: {ovf.cpus} vCPU, {ovf.memory_mib} MiB, firmware {ovf.firmware}, "
            f"disks {', '.join(f'{d.file} on {d.controller}' for d in ovf.disks) or 'none'}, NICs "
            f"{', '.join(n.model + ' ' + (n.mac or '(no MAC)') for n in ovf.nics) or 'none'}",
        )
    ]
    for nic in ovf.nics:
        if nic.model != "virtio":
            out.append(
                Finding(
                    "nic-model-changes",
                    "info",
                    f"NIC {nic.model} {nic.mac or ''} becomes virtio-net on the target"
                    + ("; its MAC is kept in the generated VM" if nic.mac else ""),
                )
            )
    for disk in ovf.disks:
        if disk.controller not in ("virtio",):
            out.append(
                Finding(
                    "disk-controller-changes",
                    "info",
                    f"disk {disk.file} on {disk.controller} becomes virtio on the target",
                )
            )
    if mf.algorithm is None:
        out.append(Finding("ova-no-manifest", "warning", "the OVA has no manifest: its files cannot be verified"))
    if mf.mismatched or mf.missing:
        out.append(
            Finding(
                "ova-manifest-mismatch",
                "critical",
                f"manifest check failed: mismatched {list(mf.mismatched)}, missing {list(mf.missing)}",
                "re-export the OVA; the archive is corrupt or was altered",
            )
        )
    elif mf.algorithm:
        out.append(Finding("ova-manifest-ok", "info", f"manifest {mf.algorithm} verified: {', '.join(mf.verified)}"))
    if print_source_ok is False:
        last = print_source_text.strip().splitlines()[-1:] or [""]
        out.append(Finding("virt-v2v-print-source", "warning", f"virt-v2v --print-source failed: {last[0][:200]}"))
    return out
