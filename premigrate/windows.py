"""Windows guests: what their registry says about a move to virtio, read in the inspection's own
libguestfs handle (its ``hivex_*`` calls), and the findings that follow. Windows is inspected,
never booted here: the verdict says ``boot not proven``.

Read from the hives (paths as Windows has them; the control set is ``Select\\Current``):
- SOFTWARE ``Microsoft\\Windows NT\\CurrentVersion``: product, build, edition;
- SYSTEM ``Services\\<driver>``: virtio-win's viostor (virtio-blk), vioscsi (virtio-scsi),
  netkvm (virtio-net), and VMware's pvscsi, vmxnet3ndis6, VMTools; the ``.sys`` files beside;
- SYSTEM ``Services\\Tcpip\\Parameters\\Interfaces\\{GUID}``: a static IPv4 address (the virtio
  NIC is a new adapter, so Windows gives it DHCP; virt-v2v's ``--mac MAC:ip:...`` re-applies one),
  named through ``Control\\Network\\{4D36E972-...}\\{GUID}\\Connection``;
- pending reboots: ``Component Based Servicing\\RebootPending``, ``WindowsUpdate\\Auto
  Update\\RebootRequired``, ``Session Manager\\PendingFileRenameOperations``;
- group policy ``Policies\\Microsoft\\Windows\\DeviceInstall\\Restrictions`` (forbids the new
  virtio devices' drivers), and antivirus products (services, uninstall entries).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from virtproof.premigrate.findings import Finding

VIRTIO_STORAGE = {"virtio": "viostor", "scsi": "vioscsi"}
VIRTIO_NET = "netkvm"
KNOWN_SERVICES = ("viostor", "vioscsi", "netkvm", "BALLOON", "vioser", "pvscsi", "vmxnet3ndis6", "VMTools")
ANTIVIRUS_SERVICES = {
    "SepMasterService": "Symantec Endpoint Protection",
    "McAfeeFramework": "McAfee Agent",
    "CSFalconService": "CrowdStrike Falcon",
    "SentinelAgent": "SentinelOne",
    "SAVService": "Sophos Anti-Virus",
    "WinDefend": "Microsoft Defender",
}
NET_CLASS = "{4D36E972-E325-11CE-BFC1-08002BE10318}"


@dataclass(frozen=True)
class StaticIp:
    interface: str  # the connection name (Ethernet0) or the GUID
    address: str
    mask: str
    gateway: str
    dns: str


@dataclass(frozen=True)
class WindowsFacts:
    product: str
    version: str
    build: str
    edition: str
    services: dict[str, int]  # service name -> Start (0 boot .. 4 disabled), present ones only
    driver_files: frozenset[str]  # lower-case *.sys names in System32/drivers among the known ones
    static_ips: tuple[StaticIp, ...]
    pending_reboot: tuple[str, ...]
    device_install_blocked: tuple[str, ...]  # the policy values that forbid new devices
    antivirus: tuple[str, ...]

    def has_driver(self, service: str) -> bool:
        return service in self.services and self.services[service] != 4


def _decode(kind: int, data: bytes) -> str | int | list[str]:
    if kind in (1, 2):
        return data.decode("utf-16-le", "replace").split("\0", 1)[0]
    if kind == 7:
        return [s for s in data.decode("utf-16-le", "replace").split("\0") if s]
    if kind == 4 and len(data) >= 4:
        return int(struct.unpack("<I", data[:4])[0])
    return data.hex()


class _Hive:
    """One open hive in the handle (libguestfs holds one at a time)."""

    def __init__(self, g: Any, path: str) -> None:
        self.g = g
        g.hivex_open(path, write=False)
        self.root = int(g.hivex_root())

    def node(self, path: str) -> int | None:
        node = self.root
        for part in [p for p in path.split("\\") if p]:
            child = int(self.g.hivex_node_get_child(node, part))
            if not child:
                return None
            node = child
        return node

    def value(self, path: str, key: str) -> str | int | list[str] | None:
        node = self.node(path)
        if node is None:
            return None
        handle = int(self.g.hivex_node_get_value(node, key))
        if not handle:
            return None
        return _decode(int(self.g.hivex_value_type(handle)), bytes(self.g.hivex_value_value(handle)))

    def children(self, path: str) -> list[str]:
        node = self.node(path)
        if node is None:
            return []
        return [str(self.g.hivex_node_name(c["hivex_node_h"])) for c in self.g.hivex_node_children(node)]

    def close(self) -> None:
        self.g.hivex_close()


def _first(value: str | int | list[str] | None) -> str:
    if isinstance(value, list):
        return value[0] if value else ""
    return "" if value is None else str(value)


def _system(g: Any, systemroot: str) -> tuple[dict[str, int], tuple[StaticIp, ...], list[str], list[str]]:
    hive = _Hive(g, f"{systemroot}/System32/config/SYSTEM")
    try:
        current = hive.value("Select", "Current")
        cs = f"ControlSet{int(current) if isinstance(current, int) else 1:03d}"
        services: dict[str, int] = {}
        present = {name.lower(): name for name in hive.children(f"{cs}\\Services")}
        for name in (*KNOWN_SERVICES, *ANTIVIRUS_SERVICES):
            real = present.get(name.lower())
            if real is not None:
                start = hive.value(f"{cs}\\Services\\{real}", "Start")
                services[name] = start if isinstance(start, int) else 3
        ips = []
        base = f"{cs}\\Services\\Tcpip\\Parameters\\Interfaces"
        for guid in hive.children(base):
            if hive.value(f"{base}\\{guid}", "EnableDHCP") != 0:
                continue
            address = _first(hive.value(f"{base}\\{guid}", "IPAddress"))
            if not address or address == "0.0.0.0":
                continue
            name = _first(hive.value(f"{cs}\\Control\\Network\\{NET_CLASS}\\{guid}\\Connection", "Name")) or guid
            ips.append(
                StaticIp(
                    name,
                    address,
                    _first(hive.value(f"{base}\\{guid}", "SubnetMask")),
                    _first(hive.value(f"{base}\\{guid}", "DefaultGateway")),
                    _first(hive.value(f"{base}\\{guid}", "NameServer")),
                )
            )
        pending = []
        if hive.value(f"{cs}\\Control\\Session Manager", "PendingFileRenameOperations"):
            pending.append("Session Manager PendingFileRenameOperations")
        antivirus = [ANTIVIRUS_SERVICES[n] for n in ANTIVIRUS_SERVICES if n in services and services[n] != 4]
    finally:
        hive.close()
    return services, tuple(ips), pending, antivirus


def windows_facts(g: Any, root: str) -> WindowsFacts:
    """Read a mounted Windows guest (``root`` from ``inspect_os``) through the handle's hivex."""
    systemroot = str(g.inspect_get_windows_systemroot(root))
    services, ips, pending, antivirus = _system(g, systemroot)
    hive = _Hive(g, f"{systemroot}/System32/config/SOFTWARE")
    try:
        nt = "Microsoft\\Windows NT\\CurrentVersion"
        build = _first(hive.value(nt, "CurrentBuildNumber"))
        edition = _first(hive.value(nt, "EditionID"))
        for path, what in (
            ("Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\RebootPending", "servicing stack"),
            ("Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update\\RebootRequired", "Windows Update"),
        ):
            if hive.node(path) is not None:
                pending.append(what)
        restrictions = "Policies\\Microsoft\\Windows\\DeviceInstall\\Restrictions"
        blocked = tuple(
            key for key in ("DenyUnspecified", "DenyDeviceIDs", "DenyDeviceClasses") if hive.value(restrictions, key)
        )
        uninstall = "Microsoft\\Windows\\CurrentVersion\\Uninstall"
        for entry in hive.children(uninstall):
            name = _first(hive.value(f"{uninstall}\\{entry}", "DisplayName"))
            words = ("Endpoint Protection", "Antivirus", "Anti-Virus", "Falcon", "Sentinel")
            if any(w in name for w in words) and name not in antivirus:
                antivirus.append(name)
    finally:
        hive.close()
    drivers_dir = f"{systemroot}/System32/drivers"
    try:
        names = {str(n).lower() for n in g.ls(g.case_sensitive_path(drivers_dir))}
    except RuntimeError:
        names = set()
    known = {f"{s.lower()}.sys" for s in KNOWN_SERVICES} | {"vmxnet3.sys", "balloon.sys"}
    major, minor = g.inspect_get_major_version(root), g.inspect_get_minor_version(root)
    return WindowsFacts(
        product=str(g.inspect_get_product_name(root)),
        version=f"{major}.{minor}",
        build=build,
        edition=edition,
        services=services,
        driver_files=frozenset(names & known),
        static_ips=ips,
        pending_reboot=tuple(pending),
        device_install_blocked=blocked,
        antivirus=tuple(antivirus),
    )


def driver_phrase(missing_storage: bool, missing_net: bool) -> str:
    kinds = " and ".join(k for k, m in (("storage", missing_storage), ("network", missing_net)) if m)
    return f"install virtio-win {kinds} drivers before moving"


def windows_findings(facts: WindowsFacts, bus: str, firmware: str) -> list[Finding]:
    storage = VIRTIO_STORAGE.get(bus, "viostor")
    out = [
        Finding(
            "windows-os",
            "info",
            f"{facts.product} (version {facts.version}, build {facts.build or '?'}, {facts.edition or '?'}), "
            f"firmware {firmware}; drivers: {', '.join(sorted(facts.services)) or 'none known'}",
        )
    ]
    missing_storage = not facts.has_driver(storage)
    missing_net = not facts.has_driver(VIRTIO_NET)
    if missing_storage:
        out.append(
            Finding(
                f"windows-driver-missing-{storage}",
                "critical",
                f"no {storage} driver ({'virtio-blk' if storage == 'viostor' else 'virtio-scsi'}): Windows will not "
                "find its boot disk on the target (INACCESSIBLE_BOOT_DEVICE)",
                driver_phrase(True, False) + " (virtio-win), or convert with virt-v2v and virtio-win",
            )
        )
    if missing_net:
        out.append(
            Finding(
                "windows-driver-missing-netkvm",
                "critical",
                "no netkvm driver (virtio-net): the VM has no network on the target",
                driver_phrase(False, True) + " (virtio-win)",
            )
        )
    if not missing_storage and not missing_net:
        out.append(Finding("windows-virtio-drivers", "info", f"virtio-win drivers installed: {storage}, netkvm"))
    for ip in facts.static_ips:
        out.append(
            Finding(
                "windows-static-ip",
                "warning",
                f"static IPv4 {ip.address}/{ip.mask} gateway {ip.gateway or '-'} DNS {ip.dns or '-'} on "
                f"{ip.interface!r}: the virtio NIC is a new adapter and comes up with DHCP",
                "re-apply the address on the new adapter (virt-v2v --mac MAC:ip:ADDR,GW,LEN,DNS does so)",
            )
        )
    if facts.pending_reboot:
        out.append(
            Finding(
                "windows-pending-reboot",
                "critical",
                f"a reboot is pending ({', '.join(facts.pending_reboot)}): drivers installed now may not load",
                "reboot Windows to finish pending updates before moving",
            )
        )
    if facts.device_install_blocked:
        out.append(
            Finding(
                "windows-gpo-device-install",
                "critical",
                f"group policy forbids installing new devices ({', '.join(facts.device_install_blocked)}): "
                "the virtio devices would get no driver",
                "allow the virtio-win device IDs in the DeviceInstall policy before moving",
            )
        )
    for product in facts.antivirus:
        if product != "Microsoft Defender":
            out.append(
                Finding(
                    "windows-antivirus",
                    "warning",
                    f"{product} installed: it may block driver installation or first-boot scripts",
                    "suspend it for the move",
                )
            )
    if "VMTools" in facts.services:
        out.append(Finding("windows-vmware-tools", "warning", "VMware Tools installed", "remove after the move"))
    return out
