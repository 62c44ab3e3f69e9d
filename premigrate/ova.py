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


@dataclass(frozen=True)
class OvfInfo:
    name: str
    cpus: int
    memory_mib: int
    firmware: str  # bios | efi
    disks: tuple[OvfDisk, ...]
    nics: tuple[OvfNic, ...]
    os_type: str | None


@dataclass(frozen=True)
class ManifestCheck:
    algorithm: str | None
    verified: tuple[str, ...]
    mismatched: tuple[str, ...]
    missing: tuple[str, ...]  # named in the manifest but absent from the archive
    unlisted: tuple[str, ...]  # in the archive but not in the manifest


def _capacity(value: str, units: str | None) -> int:
    factor = _UNITS.get((units or "byte").strip(), 1)
    return int(float(value)) * factor


def parse_ovf(text: str, where: str = "OVF") -> OvfInfo:
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
    for config in hardware.iterfind("vmw:Config", NS):
        if config.get(VMW + "key") == "firmware":
            firmware = config.get(VMW + "value", "bios")
    items = list(hardware.iterfind("ovf:Item", NS)) + list(hardware.iterfind("ovf:EthernetPortItem", NS))
    for item in items:

        def field(tag: str, item: ET.Element = item) -> str | None:
            el = item.find(RASD + tag)
            if el is None:
                el = item.find(
                    EPASD + tag
                )
            return el.text.strip() if el is not None and el.text else None

        kind = field("ResourceType")
        if kind == "3":
            cpus = int(field("VirtualQuantity") or 1)
        elif kind == "4":
            memory = _capacity(field("VirtualQuantity") or "1024", field("AllocationUnits") or "byte * 2^20") // 1024**2
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
            disks.append(OvfDisk(ref, file, cap, controllers.get(field("Parent") or "", "unknown")))
    return OvfInfo(name, cpus, memory, firmware, tuple(disks), tuple(nics), os_type)


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


def open_ova(path: Path, workdir: Path) -> OvaContents:
    """Read the OVF, check the manifest, extract the disks into ``workdir``."""
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise BadSource(f"{path}: not an OVA (tar) archive: {exc}") from None
    with tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        ovf_names = [n for n in members if n.endswith(".ovf")]
        if not ovf_names:
            raise BadSource(f"{path}: OVA holds no .ovf descriptor")
        ovf_file = tar.extractfile(members[ovf_names[0]])
        assert ovf_file is not None
        ovf_text = ovf_file.read().decode("utf-8", "replace")
        info = parse_ovf(ovf_text, f"{path}:{ovf_names[0]}")
        manifest = _check_manifest(tar, members)
        out: list[Path] = []
        for disk in info.disks:
            member = members.get(disk.file)
            if member is None:
                raise BadSource(f"{path}: the OVF names disk file {disk.file!r} that the archive does not hold")
            target = workdir / Path(disk.file).name
            src = tar.extractfile(member)
            assert src is not None
            with open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
            out.append(target)
    return OvaContents(ovf_names[0], info, manifest, tuple(out))


def _check_manifest(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> ManifestCheck:
    mf_names = [n for n in members if n.endswith(".mf")]
    if not mf_names:
        return ManifestCheck(None, (), (), (), tuple(members))
    mf = tar.extractfile(members[mf_names[0]])
    assert mf is not None
    entries: dict[str, tuple[str, str]] = {}
    for line in mf.read().decode("utf-8", "replace").splitlines():
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
