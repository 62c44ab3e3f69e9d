"""Network configuration bound to interface names or MACs, across the usual guest tools.

After a move the NIC is a virtio-net device at a new PCI address, so its predictable name
changes (a VMware ``ens192`` becomes ``enp1s0`` on KubeVirt's q35) and so does its MAC unless
it is kept. A configuration that names the old interface leaves the guest without network.
These parsers read file text only; ``inspect`` feeds them what it finds on the disk.
"""

from __future__ import annotations

import configparser
import fnmatch
import re
from dataclasses import dataclass
from typing import Literal

import yaml

Tool = Literal["ifupdown", "netplan", "networkd", "networkmanager", "ifcfg", "udev", "networkd-link"]

# The names a first virtio NIC gets: KubeVirt (and our boot proof) puts it behind a PCIe root
# port, hence enp1s0; on qemu's pc machine it is ens3 or enp0s3; net.ifnames=0 gives eth0.
TARGET_NIC_NAMES = ("enp1s0", "enp0s2", "enp0s3", "ens3")


@dataclass(frozen=True)
class NicBinding:
    """One configured interface: the file, the tool, the name pattern or MAC it matches."""

    path: str
    tool: Tool
    name: str | None
    mac: str | None
    configures_ip: bool

    def matches_target(self, eth_names: bool = False) -> bool:
        """Would this configuration apply to the first virtio NIC after the move?"""
        if self.mac is not None and self.name is None:
            return False
        if self.name is None:
            return True
        names = ("eth0",) if eth_names else TARGET_NIC_NAMES
        patterns = self.name.split()
        return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def parse_ifupdown(path: str, text: str) -> list[NicBinding]:
    out: list[NicBinding] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "iface" and words[1] != "lo":
            out.append(NicBinding(path, "ifupdown", words[1], None, words[3:4] != ["manual"]))
    return out


def parse_netplan(path: str, text: str) -> list[NicBinding]:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return []
    network = doc.get("network") if isinstance(doc, dict) else None
    ethernets = network.get("ethernets") if isinstance(network, dict) else None
    out: list[NicBinding] = []
    if not isinstance(ethernets, dict):
        return out
    for key, conf in ethernets.items():
        conf = conf if isinstance(conf, dict) else {}
        match = conf.get("match") if isinstance(conf.get("match"), dict) else None
        ip = bool(conf.get("dhcp4") or conf.get("dhcp6") or conf.get("addresses"))
        if match:
            mac = match.get("macaddress")
            out.append(NicBinding(path, "netplan", match.get("name"), str(mac).lower() if mac else None, ip))
        else:
            out.append(NicBinding(path, "netplan", str(key), None, ip))
    return out


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text)
    except configparser.Error:
        return configparser.ConfigParser()
    return parser


def parse_networkd(path: str, text: str) -> list[NicBinding]:
    ini = _ini(text)
    name = ini.get("Match", "Name", fallback=None)
    mac = ini.get("Match", "MACAddress", fallback=None)
    ip = bool(ini.get("Network", "DHCP", fallback="") not in ("", "no") or ini.get("Network", "Address", fallback=None))
    if name is None and mac is None and not ini.has_section("Match"):
        return []
    return [NicBinding(path, "networkd", name, mac.lower() if mac else None, ip)]


def parse_networkd_link(path: str, text: str) -> list[NicBinding]:
    """A ``.link`` file renaming a NIC matched by MAC pins the name to that MAC."""
    ini = _ini(text)
    mac = ini.get("Match", "MACAddress", fallback=None)
    name = ini.get("Link", "Name", fallback=None)
    if mac and name:
        return [NicBinding(path, "networkd-link", None, mac.lower(), False)]
    return []


def parse_nmconnection(path: str, text: str) -> list[NicBinding]:
    ini = _ini(text)
    if ini.get("connection", "type", fallback="ethernet") not in ("ethernet", "802-3-ethernet"):
        return []
    name = ini.get("connection", "interface-name", fallback=None)
    mac = ini.get("ethernet", "mac-address", fallback=None)
    return [NicBinding(path, "networkmanager", name, mac.lower() if mac else None, True)]


def parse_ifcfg(path: str, text: str) -> list[NicBinding]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([A-Z_]+)=(.*)", line)
        if match:
            values[match.group(1)] = match.group(2).strip().strip("\"'")
    if values.get("DEVICE") in (None, "lo"):
        return []
    mac = values.get("HWADDR")
    return [NicBinding(path, "ifcfg", values["DEVICE"], mac.lower() if mac else None, True)]


def parse_udev_rules(path: str, text: str) -> list[NicBinding]:
    out: list[NicBinding] = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        mac = re.search(r'ATTR\{address\}=="([0-9a-fA-F:]+)"', line)
        name = re.search(r'NAME="([^"]+)"', line)
        if mac and name:
            out.append(NicBinding(path, "udev", None, mac.group(1).lower(), False))
    return out


PARSERS = {
    "ifupdown": parse_ifupdown,
    "netplan": parse_netplan,
    "networkd": parse_networkd,
    "networkd-link": parse_networkd_link,
    "networkmanager": parse_nmconnection,
    "ifcfg": parse_ifcfg,
    "udev": parse_udev_rules,
}


def classify(path: str) -> Tool | None:
    """Which parser reads a file at this guest path (None: not a network config file)."""
    if path == "/etc/network/interfaces" or path.startswith("/etc/network/interfaces.d/"):
        return "ifupdown"
    if path.startswith("/etc/netplan/") and path.endswith((".yaml", ".yml")):
        return "netplan"
    if path.startswith(("/etc/systemd/network/", "/run/systemd/network/")):
        if path.endswith(".network"):
            return "networkd"
        if path.endswith(".link"):
            return "networkd-link"
    if path.startswith("/etc/NetworkManager/system-connections/"):
        return "networkmanager"
    if path.startswith("/etc/sysconfig/network-scripts/ifcfg-"):
        return "ifcfg"
    if path.startswith("/etc/udev/rules.d/") and "net" in path.rsplit("/", 1)[-1]:
        return "udev"
    return None


def parse(path: str, text: str) -> list[NicBinding]:
    tool = classify(path)
    return PARSERS[tool](path, text) if tool else []
