"""Inspect a source disk without booting it: one read-only libguestfs handle for every check.

``collect_guest_facts`` gathers facts (OS, firmware, kernel, modules, initramfs contents,
fstab, boot loader, network configs, agents, checksums of a few files); ``virtproof.premigrate.checks``
turns facts into findings. Keeping the two apart lets the rules be tested on plain data.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from virtproof.premigrate import netconfig
from virtproof.premigrate.gfs import open_guestfs
from virtproof.premigrate.imagefile import ImageFacts
from virtproof.premigrate.initramfs import InitramfsError, list_initramfs, module_names, normalize_module
from virtproof.premigrate.windows import WindowsFacts, windows_facts

ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# Kernel module -> the Kconfig symbol that builds it (names differ).
TARGET_MODULES = {
    "virtio_pci": "CONFIG_VIRTIO_PCI",
    "virtio_blk": "CONFIG_VIRTIO_BLK",
    "virtio_scsi": "CONFIG_SCSI_VIRTIO",
    "virtio_net": "CONFIG_VIRTIO_NET",
}
ModuleState = Literal["builtin", "module", "missing"]
NET_CONFIG_DIRS = (
    "/etc/network/interfaces.d",
    "/etc/netplan",
    "/etc/systemd/network",
    "/etc/NetworkManager/system-connections",
    "/etc/sysconfig/network-scripts",
    "/etc/udev/rules.d",
)
AGENT_FILES = {
    "qemu-guest-agent": ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"),
    "vmware-tools": ("/usr/bin/vmtoolsd", "/etc/vmware-tools", "/usr/lib/vmware-tools"),
    "hyperv-daemons": ("/usr/sbin/hv_kvp_daemon", "/usr/sbin/hypervkvpd", "/usr/libexec/hypervkvpd"),
}
CHECKSUM_DIR = "/srv/virtproof"
MAX_INITRAMFS_BYTES = 256 * 1024 * 1024  # the guest's file is copied to the host to be listed
MAX_CHECKSUM_FILES = 8


@dataclass(frozen=True)
class FstabEntry:
    spec: str
    mountpoint: str
    fstype: str


@dataclass(frozen=True)
class BootEntry:
    loader: Literal["extlinux", "grub", "none"]
    config_path: str | None
    kernel: str | None
    initrd: str | None
    cmdline: str

    @property
    def root_spec(self) -> str | None:
        match = re.search(r"(?:^|\s)root=(\S+)", self.cmdline)
        return match.group(1) if match else None


@dataclass(frozen=True)
class GuestFacts:
    os_type: str  # linux, windows, unknown
    distro: str
    product: str
    version: str
    hostname: str
    arch: str
    root_device: str
    firmware: Literal["bios", "uefi"]
    partition_table: str
    boot: BootEntry
    kernel_version: str | None
    modules: dict[str, ModuleState] = field(default_factory=dict)
    initramfs_path: str | None = None
    initramfs_modules: frozenset[str] = frozenset()
    initramfs_error: str | None = None
    fstab: tuple[FstabEntry, ...] = ()
    nics: tuple[netconfig.NicBinding, ...] = ()
    eth_names: bool = False  # net.ifnames=0 on the kernel command line
    agents: frozenset[str] = frozenset()
    init_system: Literal["systemd", "micro", "sysv", "unknown"] = "unknown"
    checksums: tuple[tuple[str, str], ...] = ()
    initramfs_tool: Literal["initramfs-tools", "dracut", "none"] = "none"
    windows: WindowsFacts | None = None
    efi_loaders: tuple[str, ...] = ()  # EFI binaries on the ESP (EFI/debian/grubx64.efi, ...)
    serial_console: bool = False  # the kernel command line has console=ttyS*

    @property
    def secure_boot_ready(self) -> bool:
        """A signed shim on the ESP: the guest can boot with Secure Boot on."""
        return any(p.lower().endswith(("shimx64.efi", "bootmgfw.efi")) for p in self.efi_loaders)


@dataclass(frozen=True)
class Inspection:
    image: ImageFacts
    guest: GuestFacts | None
    error: str | None
    seconds: float


def _read(g: Any, path: str) -> str | None:
    try:
        if g.is_file(path, followsymlinks=True):
            return bytes(g.read_file(path)).decode("utf-8", "replace")
    except RuntimeError:
        return None
    return None


def _exists(g: Any, path: str) -> bool:
    try:
        return bool(g.exists(path))
    except RuntimeError:
        return False


def _firmware(g: Any) -> tuple[Literal["bios", "uefi"], str, tuple[str, ...]]:
    """BIOS or UEFI, the partition table, and the EFI system partitions (devices)."""
    firmware: Literal["bios", "uefi"] = "bios"
    table = "unknown"
    esps: list[str] = []
    for dev in g.list_devices():
        try:
            table = str(g.part_get_parttype(dev))
        except RuntimeError:
            continue
        if table != "gpt":
            continue
        for part in g.part_list(dev):
            num = int(part["part_num"])
            if str(g.part_get_gpt_type(dev, num)).upper() == ESP_GUID:
                firmware = "uefi"
                esps.append(f"{dev}{num}")
    return firmware, table, tuple(esps)


def _efi_loaders(g: Any, esps: tuple[str, ...]) -> tuple[str, ...]:
    """EFI binaries on the ESP(s): each mounted read-only at / in turn, before the guest's own
    file systems are mounted."""
    found: list[str] = []
    for dev in esps:
        try:
            g.mount_ro(dev, "/")
        except RuntimeError:
            continue
        try:
            if g.is_dir("/EFI"):
                found += [f"EFI/{str(p).lstrip('/')}" for p in g.find("/EFI") if str(p).lower().endswith(".efi")]
        finally:
            g.umount_all()
    return tuple(sorted(found)[:32])


def _parse_extlinux(path: str, text: str) -> BootEntry:
    labels: dict[str, dict[str, str]] = {}
    default, current = None, None
    for raw in text.splitlines():
        words = raw.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        key, value = words[0].upper(), words[1] if len(words) > 1 else ""
        if key == "DEFAULT":
            default = value.strip()
        elif key == "LABEL":
            current = value.strip()
            labels[current] = {}
        elif current is not None and key in ("LINUX", "KERNEL", "INITRD", "APPEND"):
            labels[current]["KERNEL" if key == "LINUX" else key] = value.strip()
    chosen = labels.get(default or "") or (next(iter(labels.values())) if labels else {})
    return BootEntry("extlinux", path, chosen.get("KERNEL"), chosen.get("INITRD"), chosen.get("APPEND", ""))


def _parse_grub(path: str, text: str) -> BootEntry:
    kernel = initrd = None
    cmdline = ""
    for raw in text.splitlines():
        words = raw.strip().split()
        if not words:
            continue
        if words[0] in ("linux", "linux16", "linuxefi") and kernel is None and len(words) > 1:
            kernel, cmdline = words[1], " ".join(words[2:])
        elif words[0] in ("initrd", "initrd16", "initrdefi") and kernel is not None and initrd is None:
            initrd = words[1] if len(words) > 1 else None
    return BootEntry("grub", path, kernel, initrd, cmdline)


EXTLINUX_CONFIGS = ("/boot/extlinux/extlinux.conf", "/extlinux.conf", "/boot/syslinux/syslinux.cfg", "/syslinux.cfg")
GRUB_CONFIGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/efi/EFI/debian/grub.cfg")


def _boot_entry(g: Any) -> BootEntry:
    for path in EXTLINUX_CONFIGS:
        text = _read(g, path)
        if text is not None:
            return _parse_extlinux(path, text)
    for path in GRUB_CONFIGS:
        text = _read(g, path)
        if text is not None and re.search(r"^\s*linux", text, re.M):
            return _parse_grub(path, text)
    return BootEntry("none", None, None, None, "")


def _in_boot(g: Any, path: str | None) -> str | None:
    """A boot loader path as seen from the mounted root (``/vmlinuz`` may live in /boot)."""
    if not path:
        return None
    for candidate in (path, "/boot" + path if not path.startswith("/boot/") else path):
        if _exists(g, candidate):
            return candidate
    return None


def _kernel_version(g: Any, boot: BootEntry) -> str | None:
    kernel = _in_boot(g, boot.kernel)
    if kernel:
        real = str(g.realpath(kernel))
        match = re.search(r"vmlinu[xz]-(.+)$", real)
        if match:
            return match.group(1)
    versions = sorted(str(v) for v in g.ls("/lib/modules")) if g.is_dir("/lib/modules") else []
    return versions[-1] if versions else None


def _modules(g: Any, kver: str | None) -> dict[str, ModuleState]:
    available: set[str] = set()
    builtin: set[str] = set()
    base = f"/lib/modules/{kver}" if kver else "/lib/modules"
    dep = _read(g, f"{base}/modules.dep")
    if dep is not None:
        available = module_names([line.split(":", 1)[0] for line in dep.splitlines()])
    elif g.is_dir("/lib/modules"):
        available = module_names([str(p) for p in g.find("/lib/modules")])
    builtin_text = _read(g, f"{base}/modules.builtin") or ""
    builtin = module_names([line.strip() for line in builtin_text.splitlines()])
    config = _read(g, f"/boot/config-{kver}") if kver else None
    states: dict[str, ModuleState] = {}
    for module, symbol in TARGET_MODULES.items():
        if module in builtin or (config and re.search(rf"^{symbol}=y$", config, re.M)):
            states[module] = "builtin"
        elif module in available:
            states[module] = "module"
        else:
            states[module] = "missing"
    return states


def _initramfs(g: Any, boot: BootEntry, kver: str | None) -> tuple[str | None, frozenset[str], str | None]:
    candidates = [_in_boot(g, boot.initrd)]
    if kver:
        candidates += [f"/boot/initrd.img-{kver}", f"/boot/initramfs-{kver}.img"]
    candidates += ["/boot/initrd.img"]
    path = next((c for c in candidates if c and _exists(g, c)), None)
    if path is None:
        return None, frozenset(), None
    size = int(g.filesize(path))
    if size > MAX_INITRAMFS_BYTES:
        return path, frozenset(), f"{size // 1024**2} MiB: too big to be an initramfs"
    with tempfile.NamedTemporaryFile(prefix="vp-initrd-") as tmp:
        g.download(path, tmp.name)
        try:
            members = list_initramfs(Path(tmp.name).read_bytes())
        except InitramfsError as exc:
            return path, frozenset(), str(exc)
    return path, frozenset(module_names(members)), None


def _fstab(g: Any) -> tuple[FstabEntry, ...]:
    text = _read(g, "/etc/fstab") or ""
    out = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3:
            out.append(FstabEntry(words[0], words[1], words[2]))
    return tuple(out)


def _network(g: Any) -> tuple[netconfig.NicBinding, ...]:
    files = ["/etc/network/interfaces"]
    for directory in NET_CONFIG_DIRS:
        if g.is_dir(directory):
            files += [f"{directory}/{name}" for name in sorted(g.ls(directory))]
    found: list[netconfig.NicBinding] = []
    for path in files:
        if netconfig.classify(path) is None:
            continue
        text = _read(g, path)
        if text is not None:
            found.extend(netconfig.parse(path, text))
    return tuple(found)


def _init_system(g: Any) -> Literal["systemd", "micro", "sysv", "unknown"]:
    if _exists(g, "/etc/virtproof/modules") and _exists(g, "/init"):
        return "micro"
    if _exists(g, "/sbin/init") and "systemd" in str(g.realpath("/sbin/init")):
        return "systemd"
    if _exists(g, "/lib/systemd/systemd"):
        return "systemd"
    if _exists(g, "/etc/inittab"):
        return "sysv"
    return "unknown"


def _checksums(g: Any, kernel: str | None) -> tuple[tuple[str, str], ...]:
    paths = ["/etc/passwd", "/etc/group", "/etc/hostname"]
    if kernel:
        paths.append(str(g.realpath(kernel)))
    if g.is_dir(CHECKSUM_DIR):
        paths += [f"{CHECKSUM_DIR}/{n}" for n in sorted(g.ls(CHECKSUM_DIR))[:MAX_CHECKSUM_FILES]]
    out = []
    for path in paths:
        if g.is_file(path):
            out.append((path, str(g.checksum("sha256", path))))
    return tuple(out)


def _mount_root(g: Any) -> tuple[str, dict[str, str]] | None:
    """Inspection's root and mountpoints; for OS images libguestfs does not recognise (the micro
    guest), the first file system holding /init or /sbin/init."""
    roots = g.inspect_os()
    if roots:
        root = str(roots[0])
        mounts = {str(k): str(v) for k, v in g.inspect_get_mountpoints(root).items()}
        return root, mounts
    for dev, fstype in g.list_filesystems().items():
        if fstype in ("swap", "unknown"):
            continue
        try:
            g.mount_ro(dev, "/")
        except RuntimeError:
            continue
        found = _exists(g, "/init") or _exists(g, "/sbin/init")
        g.umount_all()
        if found:
            return str(dev), {"/": str(dev)}
    return None


def collect_guest_facts(g: Any) -> GuestFacts | None:
    """Facts from a launched handle (drive added read-only). None: no operating system found."""
    firmware, table, esps = _firmware(g)
    located = _mount_root(g)
    if located is None:
        return None
    root, mounts = located
    known = root in [str(r) for r in g.inspect_get_roots()]
    efi = _efi_loaders(g, esps)
    for mountpoint in sorted(mounts, key=len):
        try:
            g.mount_ro(mounts[mountpoint], mountpoint)
        except RuntimeError:
            continue
    os_type = str(g.inspect_get_type(root)) if known else "linux"
    if os_type != "linux":
        win = windows_facts(g, root) if os_type == "windows" else None
        return GuestFacts(
            os_type=os_type,
            distro=str(g.inspect_get_distro(root)),
            product=str(g.inspect_get_product_name(root)),
            version=f"{g.inspect_get_major_version(root)}.{g.inspect_get_minor_version(root)}",
            hostname=str(g.inspect_get_hostname(root)),
            arch=str(g.inspect_get_arch(root)),
            root_device=root,
            firmware=firmware,
            partition_table=table,
            boot=BootEntry("none", None, None, None, ""),
            kernel_version=None,
            windows=win,
            efi_loaders=efi,
        )
    boot = _boot_entry(g)
    kver = _kernel_version(g, boot)
    initrd_path, initrd_modules, initrd_error = _initramfs(g, boot, kver)
    agents = frozenset(name for name, paths in AGENT_FILES.items() if any(_exists(g, p) for p in paths))
    tool: Literal["initramfs-tools", "dracut", "none"] = (
        "initramfs-tools"
        if _exists(g, "/usr/sbin/mkinitramfs") or _exists(g, "/sbin/mkinitramfs")
        else "dracut"
        if _exists(g, "/usr/bin/dracut") or _exists(g, "/sbin/dracut")
        else "none"
    )
    os_release = _read(g, "/etc/os-release") or ""
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)', os_release, re.M)
    return GuestFacts(
        os_type="linux",
        distro=str(g.inspect_get_distro(root)) if known else "unknown",
        product=str(g.inspect_get_product_name(root)) if known else (pretty.group(1) if pretty else "unknown"),
        version=f"{g.inspect_get_major_version(root)}.{g.inspect_get_minor_version(root)}" if known else "",
        hostname=str(g.inspect_get_hostname(root)) if known else (_read(g, "/etc/hostname") or "").strip(),
        arch=str(g.inspect_get_arch(root)) if known else "x86_64",
        root_device=root,
        firmware=firmware,
        partition_table=table,
        boot=boot,
        kernel_version=kver,
        modules=_modules(g, kver),
        initramfs_path=initrd_path,
        initramfs_modules=frozenset(normalize_module(m) for m in initrd_modules),
        initramfs_error=initrd_error,
        fstab=_fstab(g),
        nics=_network(g),
        eth_names="net.ifnames=0" in boot.cmdline,
        agents=agents,
        init_system=_init_system(g),
        checksums=_checksums(g, _in_boot(g, boot.kernel)),
        initramfs_tool=tool,
        efi_loaders=efi,
        serial_console=bool(re.search(r"(?:^|\s)console=ttyS", boot.cmdline)),
    )


def inspect_disk(image: ImageFacts, disk: Path | None = None) -> Inspection:
    """Inspect ``disk`` (default: the image itself) read-only in one appliance launch."""
    started = time.monotonic()
    if image.encrypted:
        return Inspection(image, None, "the image is encrypted", time.monotonic() - started)
    path = disk or image.path
    try:
        with open_guestfs([(path, image.format, True)]) as g:
            facts = collect_guest_facts(g)
    except RuntimeError as exc:
        return Inspection(image, None, f"libguestfs: {exc}", time.monotonic() - started)
    error = None if facts else "no operating system found on the disk"
    return Inspection(image, facts, error, time.monotonic() - started)
