"""Inspect a source disk without booting it: one read-only libguestfs handle for every check.

``collect_guest_facts`` gathers facts (OS, firmware, kernel, modules, initramfs contents,
fstab, boot loader, network configs, agents, checksums of a few files); ``virtproof.premigrate.checks``
turns facts into findings. Keeping the two apart lets the rules be tested on plain data.

Every libguestfs call is a round trip to an appliance that runs under TCG here (a tenth of a
second and more on a loaded machine), so calls are counted: a Linux root is found from the
partitions' and logical volumes' ``blkid`` and the guest's own fstab (libguestfs' ``inspect_os``,
which mounts and probes every file system, costs more than everything else together and is kept
for Windows and for what this does not recognise: RAID, LUKS, btrfs subvolumes); which files
exist is asked one directory at a time (``lstatnslist``), and a file known to be regular is read
without a second call (``benchmarks/bench_v2v.py --inspect`` counts and times them).
"""

from __future__ import annotations

import re
import stat
import tempfile
import time
from collections.abc import Iterable
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
PREAD_MAX = 1024 * 1024  # one protocol message holds it


@dataclass(frozen=True)
class FstabEntry:
    spec: str
    mountpoint: str
    fstype: str


@dataclass(frozen=True)
class Mount:
    """A file system of the guest as inspection mounted it."""

    mountpoint: str
    device: str  # as the appliance names it (/dev/sda1, /dev/vg0/root)
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
    esp_grub_configs: tuple[str, ...] = ()  # grub.cfg files on the ESP (EFI/debian/grub.cfg)
    serial_console: bool = False  # the kernel command line has console=ttyS*
    mounts: tuple[Mount, ...] = ()  # the guest's file systems, / first

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


class _Tree:
    """What exists in the guest's mounted file systems, asked one directory at a time: one
    ``lstatnslist`` call answers for every name in a directory (libguestfs resolves the directory
    inside the guest, as for any path). A symlink costs one more call, to follow it in the guest.
    Built after the file systems are mounted: a later mount would make it stale."""

    def __init__(self, g: Any) -> None:
        self.g = g
        self._stat: dict[str, tuple[int, int] | None] = {}  # path -> (st_mode, st_size); None: absent

    def prefetch(self, paths: Iterable[str]) -> None:
        by_dir: dict[str, list[str]] = {}
        for path in paths:
            if path in self._stat:
                continue
            directory, _, name = path.rpartition("/")
            if not path.startswith("/") or name in ("", ".", "..") or "//" in path or "/../" in path:
                self._stat[path] = self._lstat(path)
                continue
            names = by_dir.setdefault(directory or "/", [])
            if name not in names:
                names.append(name)
        for directory, names in by_dir.items():
            try:
                stats: list[Any] = list(self.g.lstatnslist(directory, names))
            except RuntimeError:  # no such directory, or not one
                stats = [None] * len(names)
            for name, st in zip(names, stats, strict=True):
                found = st is not None and int(st["st_ino"]) != -1
                self._stat[f"{directory.rstrip('/')}/{name}"] = (
                    (int(st["st_mode"]), int(st["st_size"])) if found else None
                )

    def _lstat(self, path: str) -> tuple[int, int] | None:
        try:
            st = self.g.lstatns(path)
        except RuntimeError:
            return None
        return int(st["st_mode"]), int(st["st_size"])

    def _lookup(self, path: str) -> tuple[int, int] | None:
        if path not in self._stat:
            self.prefetch([path])
        return self._stat[path]

    def _follow(self, path: str, call: str) -> bool:
        try:
            return bool(getattr(self.g, call)(path, followsymlinks=True))
        except RuntimeError:
            return False

    def exists(self, path: str) -> bool:
        st = self._lookup(path)
        if st is None:
            return False
        if stat.S_ISLNK(st[0]):
            try:
                return bool(self.g.exists(path))
            except RuntimeError:
                return False
        return True

    def is_file(self, path: str) -> bool:
        st = self._lookup(path)
        if st is None:
            return False
        return self._follow(path, "is_file") if stat.S_ISLNK(st[0]) else stat.S_ISREG(st[0])

    def is_dir(self, path: str) -> bool:
        st = self._lookup(path)
        if st is None:
            return False
        return self._follow(path, "is_dir") if stat.S_ISLNK(st[0]) else stat.S_ISDIR(st[0])

    def size(self, path: str) -> int:
        st = self._lookup(path)
        if st is not None and stat.S_ISREG(st[0]):
            return st[1]
        return int(self.g.filesize(path))

    def read(self, path: str) -> str | None:
        """The file's text, or None when it is not a regular file (never a FIFO or a device). A
        small file known to be regular is read in one ``pread`` reply (``read_file`` goes through
        the chunked download protocol: several times slower for a small file)."""
        if not self.is_file(path):
            return None
        st = self._stat.get(path)
        try:
            if st is not None and stat.S_ISREG(st[0]) and st[1] <= PREAD_MAX:
                return bytes(self.g.pread(path, PREAD_MAX + 1, 0)).decode("utf-8", "replace")
            return bytes(self.g.read_file(path)).decode("utf-8", "replace")
        except RuntimeError:
            return None

    def ls(self, directory: str) -> list[str]:
        """The directory's entries as paths, their types fetched in the same go."""
        if not self.is_dir(directory):
            return []
        try:
            paths = [f"{directory.rstrip('/')}/{name}" for name in sorted(str(n) for n in self.g.ls(directory))]
        except RuntimeError:
            return []
        self.prefetch(paths)
        return paths


@dataclass(frozen=True)
class _Devices:
    """The disk's partitions and logical volumes with their ``blkid`` tags (file system type,
    UUID, label, and for a partition its table's scheme and its type), LVs first."""

    tags: dict[str, dict[str, str]]

    @property
    def table(self) -> str:
        schemes = {t["PART_ENTRY_SCHEME"] for t in self.tags.values() if "PART_ENTRY_SCHEME" in t}
        scheme = "gpt" if "gpt" in schemes else min(schemes, default="unknown")
        return "msdos" if scheme == "dos" else scheme  # as parted names it

    @property
    def esps(self) -> tuple[str, ...]:
        return tuple(
            dev
            for dev, t in self.tags.items()
            if t.get("PART_ENTRY_SCHEME") == "gpt" and t.get("PART_ENTRY_TYPE", "").upper() == ESP_GUID
        )

    @property
    def firmware(self) -> Literal["bios", "uefi"]:
        return "uefi" if self.esps else "bios"


def _blkid(g: Any, dev: str) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in g.blkid(dev).items()}
    except RuntimeError:  # no signature: an empty partition, a BIOS boot partition
        return {}


def _probe_devices(g: Any) -> _Devices:
    """One ``blkid`` per partition (and per logical volume when there is an LVM physical volume,
    per disk when there is no partition): BIOS or UEFI, the table, and each file system."""
    partitions = [str(p) for p in g.list_partitions()] or [str(d) for d in g.list_devices()]
    tags = {dev: t for dev in partitions if (t := _blkid(g, dev))}
    if any(t.get("TYPE") == "LVM2_member" for t in tags.values()):
        tags = {lv: t for lv in (str(v) for v in g.lvs()) if (t := _blkid(g, lv))} | tags
    return _Devices(tags)


EspFiles = tuple[tuple[str, ...], tuple[str, ...]]  # EFI binaries, grub.cfg files


def _esp_files(paths: list[str]) -> EspFiles:
    loaders = sorted(p for p in paths if p.lower().endswith(".efi"))[:32]
    configs = sorted(p for p in paths if p.lower().endswith("/grub.cfg"))[:8]
    return tuple(loaders), tuple(configs)


def _efi_loaders(g: Any, esps: tuple[str, ...]) -> EspFiles:
    """EFI binaries and GRUB configurations on the ESP(s): each mounted read-only at / in turn,
    before the guest's own file systems are mounted."""
    found: list[str] = []
    for dev in esps:
        try:
            g.mount_ro(dev, "/")
        except RuntimeError:
            continue
        try:
            found += _find_efi(g, "/")
        finally:
            g.umount_all()
    return _esp_files(found)


def _find_efi(g: Any, esp_root: str) -> list[str]:
    directory = f"{esp_root.rstrip('/')}/EFI"
    try:
        return [f"EFI/{str(p).lstrip('/')}" for p in g.find(directory)]
    except RuntimeError:  # no EFI directory
        return []


def _mounted_efi_loaders(g: Any, esps: tuple[str, ...], mounts: tuple[Mount, ...]) -> EspFiles:
    """``_efi_loaders`` where the guest's fstab mounted the ESP(s) (one call each); an ESP it does
    not mount is read on its own, and the guest's file systems mounted again."""
    where = {m.device: m.mountpoint for m in mounts}
    if all(dev in where for dev in esps):
        return _esp_files([p for dev in esps for p in _find_efi(g, where[dev])])
    g.umount_all()
    found = _efi_loaders(g, esps)
    for mount in mounts:
        g.mount_ro(mount.device, mount.mountpoint)
    return found


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
InitramfsTool = Literal["initramfs-tools", "dracut", "none"]
INITTOOLS: dict[InitramfsTool, tuple[str, ...]] = {
    "initramfs-tools": ("/usr/sbin/mkinitramfs", "/sbin/mkinitramfs"),
    "dracut": ("/usr/bin/dracut", "/sbin/dracut"),
}
INIT_FILES = ("/etc/virtproof/modules", "/init", "/sbin/init", "/lib/systemd/systemd", "/etc/inittab")
ETC_FILES = ("/etc/fstab", "/etc/os-release", "/etc/hostname", "/etc/passwd", "/etc/group", "/etc/network/interfaces")
ARCH_BINARIES = ("/bin/ls", "/bin/sh", "/bin/bash", "/usr/bin/ls", "/bin/busybox")
ELF_MACHINES = {
    0x3E: "x86_64",
    0x03: "i386",
    0xB7: "aarch64",
    0x28: "arm",
    0x15: "ppc64",
    0x16: "s390x",
    0xF3: "riscv64",
}
# File systems a Linux root is looked for on without inspect_os; anything else (NTFS, RAID
# members, LUKS, btrfs with its subvolumes) is left to libguestfs' inspection.
LINUX_ROOT_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "jfs", "reiserfs"})
NOT_LINUX_ROOT = frozenset({"ntfs", "linux_raid_member", "crypto_LUKS", "btrfs", "zfs_member", "ReFS", "BitLocker"})
NOT_BLOCK_FSTYPES = frozenset({"swap", "proc", "sysfs", "tmpfs", "devpts", "devtmpfs", "nfs", "nfs4", "cifs", "none"})
_GUEST_DISK = re.compile(r"^/dev/(?:sd|hd|xvd|vd)([a-z])(\d*)$")


def _boot_entry(tree: _Tree) -> BootEntry:
    for path in EXTLINUX_CONFIGS:
        text = tree.read(path)
        if text is not None:
            return _parse_extlinux(path, text)
    for path in GRUB_CONFIGS:
        text = tree.read(path)
        if text is not None and re.search(r"^\s*linux", text, re.M):
            return _parse_grub(path, text)
    return BootEntry("none", None, None, None, "")


def _in_boot(tree: _Tree, path: str | None) -> str | None:
    """A boot loader path as seen from the mounted root (``/vmlinuz`` may live in /boot)."""
    if not path:
        return None
    for candidate in (path, "/boot" + path if not path.startswith("/boot/") else path):
        if tree.exists(candidate):
            return candidate
    return None


def _realpath(g: Any, path: str) -> str:
    try:
        return str(g.realpath(path))
    except RuntimeError:
        return path


def _kernel(g: Any, tree: _Tree, boot: BootEntry) -> tuple[str | None, str | None]:
    """The kernel's real path and its version."""
    kernel = _in_boot(tree, boot.kernel)
    real = _realpath(g, kernel) if kernel else None
    if real:
        match = re.search(r"vmlinu[xz]-(.+)$", real)
        if match:
            return real, match.group(1)
    versions = sorted(p.rsplit("/", 1)[1] for p in tree.ls("/lib/modules"))
    return real, versions[-1] if versions else None


def _modules(g: Any, tree: _Tree, kver: str | None) -> dict[str, ModuleState]:
    available: set[str] = set()
    builtin: set[str] = set()
    base = f"/lib/modules/{kver}" if kver else "/lib/modules"
    tree.prefetch([f"{base}/modules.dep", f"{base}/modules.builtin"])
    dep = tree.read(f"{base}/modules.dep")
    if dep is not None:
        available = module_names([line.split(":", 1)[0] for line in dep.splitlines()])
    elif tree.is_dir("/lib/modules"):
        available = module_names([str(p) for p in g.find("/lib/modules")])
    builtin_text = tree.read(f"{base}/modules.builtin") or ""
    builtin = module_names([line.strip() for line in builtin_text.splitlines()])
    # The kernel's config says the same as modules.builtin: read only when that is missing.
    config = tree.read(f"/boot/config-{kver}") if kver and not builtin_text else None
    states: dict[str, ModuleState] = {}
    for module, symbol in TARGET_MODULES.items():
        if module in builtin or (config and re.search(rf"^{symbol}=y$", config, re.M)):
            states[module] = "builtin"
        elif module in available:
            states[module] = "module"
        else:
            states[module] = "missing"
    return states


def _initramfs(g: Any, tree: _Tree, boot: BootEntry, kver: str | None) -> tuple[str | None, frozenset[str], str | None]:
    candidates = [_in_boot(tree, boot.initrd)]
    if kver:
        candidates += [f"/boot/initrd.img-{kver}", f"/boot/initramfs-{kver}.img"]
    candidates += ["/boot/initrd.img"]
    path = next((c for c in candidates if c and tree.is_file(c)), None)
    if path is None:
        return None, frozenset(), None
    size = tree.size(path)
    if size > MAX_INITRAMFS_BYTES:
        return path, frozenset(), f"{size // 1024**2} MiB: too big to be an initramfs"
    with tempfile.NamedTemporaryFile(prefix="vp-initrd-") as tmp:
        g.download(path, tmp.name)
        try:
            members = list_initramfs(Path(tmp.name).read_bytes())
        except InitramfsError as exc:
            return path, frozenset(), str(exc)
    return path, frozenset(module_names(members)), None


def _parse_fstab(text: str) -> tuple[FstabEntry, ...]:
    out = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3:
            out.append(FstabEntry(words[0], words[1], words[2]))
    return tuple(out)


def _network(tree: _Tree) -> tuple[netconfig.NicBinding, ...]:
    files = ["/etc/network/interfaces"]
    tree.prefetch(NET_CONFIG_DIRS)
    for directory in NET_CONFIG_DIRS:
        files += tree.ls(directory)
    found: list[netconfig.NicBinding] = []
    for path in files:
        if netconfig.classify(path) is None:
            continue
        text = tree.read(path)
        if text is not None:
            found.extend(netconfig.parse(path, text))
    return tuple(found)


def _init_system(g: Any, tree: _Tree) -> Literal["systemd", "micro", "sysv", "unknown"]:
    if tree.exists("/etc/virtproof/modules") and tree.exists("/init"):
        return "micro"
    if tree.exists("/sbin/init") and "systemd" in _realpath(g, "/sbin/init"):
        return "systemd"
    if tree.exists("/lib/systemd/systemd"):
        return "systemd"
    if tree.exists("/etc/inittab"):
        return "sysv"
    return "unknown"


def _checksums(g: Any, tree: _Tree, kernel: str | None) -> tuple[tuple[str, str], ...]:
    paths = ["/etc/passwd", "/etc/group", "/etc/hostname"]
    if kernel:
        paths.append(kernel)
    paths += tree.ls(CHECKSUM_DIR)[:MAX_CHECKSUM_FILES]
    out = []
    for path in paths:
        if tree.is_file(path):
            out.append((path, str(g.checksum("sha256", path))))
    return tuple(out)


def _elf_arch(g: Any, tree: _Tree) -> str | None:
    """The architecture of the guest's binaries, from an ELF header (what inspect_get_arch reads)."""
    for path in ARCH_BINARIES:
        if not tree.is_file(path):
            continue
        try:
            header = bytes(g.pread(path, 20, 0))
        except RuntimeError:
            continue
        if len(header) == 20 and header.startswith(b"\x7fELF"):
            machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
            return ELF_MACHINES.get(machine, f"elf-machine-{machine:#x}")
    return None


@dataclass(frozen=True)
class _Identity:
    distro: str
    product: str
    version: str
    hostname: str
    arch: str


def _identity_from_files(g: Any, tree: _Tree) -> _Identity:
    """Distro, product, version and hostname from os-release and /etc/hostname; arch from ELF."""
    release = dict(re.findall(r'^([A-Z_]+)="?([^"\n]*)"?\s*$', tree.read("/etc/os-release") or "", re.M))
    version_id = release.get("VERSION_ID", "")
    parts = (version_id.split(".") + ["0"])[:2] if version_id else []
    return _Identity(
        distro=release.get("ID", "unknown") or "unknown",
        product=release.get("PRETTY_NAME") or release.get("NAME") or "unknown",
        version=".".join(str(int(p)) if p.isdigit() else p for p in parts),
        hostname=((tree.read("/etc/hostname") or "").strip().splitlines() or [""])[0],
        arch=_elf_arch(g, tree) or "x86_64",
    )


def _identity_inspected(g: Any, root: str) -> _Identity:
    return _Identity(
        distro=str(g.inspect_get_distro(root)),
        product=str(g.inspect_get_product_name(root)),
        version=f"{g.inspect_get_major_version(root)}.{g.inspect_get_minor_version(root)}",
        hostname=str(g.inspect_get_hostname(root)),
        arch=str(g.inspect_get_arch(root)),
    )


@dataclass(frozen=True)
class _Located:
    root: str
    mounts: tuple[Mount, ...]  # mounted now, / first
    inspected: bool  # libguestfs' inspection knows the root (inspect_get_* may be asked)
    fstab: tuple[FstabEntry, ...]


def _fstab_device(spec: str, probed: dict[str, dict[str, str]]) -> str | None:
    """The appliance device an fstab spec names, from the devices' blkid tags; None if unknown."""
    for tag in ("UUID", "LABEL", "PARTUUID", "PARTLABEL"):
        value = spec.removeprefix(f"{tag}=") if spec.startswith(f"{tag}=") else None
        by_path = f"/dev/disk/by-{tag.lower()}/"
        value = spec.removeprefix(by_path) if spec.startswith(by_path) else value
        if value is not None:
            return next((dev for dev, tags in probed.items() if tags.get(tag) == value), None)
    mapper = re.match(r"^/dev/mapper/(.+?)(?<!-)-(?!-)(.+)$", spec)
    if mapper:  # /dev/mapper/vg0-root is /dev/vg0/root ("--" is a "-" in a name)
        spec = f"/dev/{mapper.group(1).replace('--', '-')}/{mapper.group(2).replace('--', '-')}"
    disk = _GUEST_DISK.match(spec)
    if disk:  # one disk: the guest's sdX / vdX / hdX is the appliance's sdX
        spec = f"/dev/sd{disk.group(1)}{disk.group(2)}"
    return spec if spec in probed else None


def _locate_linux(g: Any, devices: _Devices) -> _Located | None:
    """A Linux root without inspect_os: the first file system (LVs first) holding /etc/fstab,
    /init or /sbin/init, then what its fstab mounts. None (nothing left mounted) when the disk has
    what this does not handle (see ``NOT_LINUX_ROOT``)."""
    probed = devices.tags
    if any(tags.get("TYPE") in NOT_LINUX_ROOT for tags in probed.values()):
        return None
    for dev, tags in probed.items():
        if tags.get("TYPE") not in LINUX_ROOT_FS:
            continue
        try:
            g.mount_ro(dev, "/")
        except RuntimeError:
            continue
        tree = _Tree(g)
        tree.prefetch(["/init", "/etc/fstab", "/sbin/init"])
        if not (tree.exists("/etc/fstab") or tree.exists("/init") or tree.exists("/sbin/init")):
            g.umount_all()
            continue
        fstab = _parse_fstab(tree.read("/etc/fstab") or "")
        mounts = [Mount("/", dev, tags["TYPE"])]
        for entry in sorted(fstab, key=lambda e: len(e.mountpoint)):
            if not entry.mountpoint.startswith("/") or entry.mountpoint == "/" or entry.fstype in NOT_BLOCK_FSTYPES:
                continue
            target = _fstab_device(entry.spec, probed)
            if target is None or target == dev or any(m.mountpoint == entry.mountpoint for m in mounts):
                continue
            try:
                g.mount_ro(target, entry.mountpoint)
            except RuntimeError:
                continue
            mounts.append(Mount(entry.mountpoint, target, probed[target].get("TYPE", entry.fstype)))
        return _Located(dev, tuple(mounts), False, fstab)
    return None


def _locate_inspected(g: Any) -> _Located | None:
    """libguestfs' inspection (Windows, and what ``_locate_linux`` leaves); for OS images it does
    not recognise (the micro guest), the first file system holding /init or /sbin/init."""
    roots = [str(r) for r in g.inspect_os()]
    if roots:
        root = roots[0]
        points = {str(k): str(v) for k, v in g.inspect_get_mountpoints(root).items()}
        mounts: list[Mount] = []
        for mountpoint in sorted(points, key=len):
            try:
                g.mount_ro(points[mountpoint], mountpoint)
            except RuntimeError:
                continue
            mounts.append(Mount(mountpoint, points[mountpoint], str(g.vfs_type(points[mountpoint]))))
        tree = _Tree(g)
        return _Located(root, tuple(mounts), True, _parse_fstab(tree.read("/etc/fstab") or ""))
    for dev, fstype in g.list_filesystems().items():
        if fstype in ("swap", "unknown"):
            continue
        try:
            g.mount_ro(dev, "/")
        except RuntimeError:
            continue
        tree = _Tree(g)
        if tree.exists("/init") or tree.exists("/sbin/init"):
            return _Located(
                str(dev), (Mount("/", str(dev), str(fstype)),), False, _parse_fstab(tree.read("/etc/fstab") or "")
            )
        g.umount_all()
    return None


def collect_guest_facts(g: Any) -> GuestFacts | None:
    """Facts from a launched handle (drive added read-only). None: no operating system found."""
    devices = _probe_devices(g)
    firmware, table = devices.firmware, devices.table
    located = _locate_linux(g, devices)
    if located is not None:
        efi, esp_configs = _mounted_efi_loaders(g, devices.esps, located.mounts)
    else:
        efi, esp_configs = _efi_loaders(g, devices.esps)
        located = _locate_inspected(g)
        if located is None:
            return None
    root = located.root
    os_type = str(g.inspect_get_type(root)) if located.inspected else "linux"
    if os_type != "linux":
        identity = _identity_inspected(g, root)
        return GuestFacts(
            os_type=os_type,
            distro=identity.distro,
            product=identity.product,
            version=identity.version,
            hostname=identity.hostname,
            arch=identity.arch,
            root_device=root,
            firmware=firmware,
            partition_table=table,
            boot=BootEntry("none", None, None, None, ""),
            kernel_version=None,
            windows=windows_facts(g, root) if os_type == "windows" else None,
            efi_loaders=efi,
            esp_grub_configs=esp_configs,
            mounts=located.mounts,
        )
    tree = _Tree(g)
    tree.prefetch(
        [*EXTLINUX_CONFIGS, *GRUB_CONFIGS, *ETC_FILES, *INIT_FILES, *ARCH_BINARIES, "/lib/modules", CHECKSUM_DIR]
        + [p for paths in (*AGENT_FILES.values(), *INITTOOLS.values()) for p in paths]
    )
    identity = _identity_inspected(g, root) if located.inspected else _identity_from_files(g, tree)
    boot = _boot_entry(tree)
    kernel, kver = _kernel(g, tree, boot)
    if kver:
        tree.prefetch([f"/boot/initrd.img-{kver}", f"/boot/initramfs-{kver}.img", f"/boot/config-{kver}"])
    initrd_path, initrd_modules, initrd_error = _initramfs(g, tree, boot, kver)
    agents = frozenset(name for name, paths in AGENT_FILES.items() if any(tree.exists(p) for p in paths))
    tool: InitramfsTool = next((name for name, paths in INITTOOLS.items() if any(map(tree.exists, paths))), "none")
    return GuestFacts(
        os_type="linux",
        distro=identity.distro,
        product=identity.product,
        version=identity.version,
        hostname=identity.hostname,
        arch=identity.arch,
        root_device=root,
        firmware=firmware,
        partition_table=table,
        boot=boot,
        kernel_version=kver,
        modules=_modules(g, tree, kver),
        initramfs_path=initrd_path,
        initramfs_modules=frozenset(normalize_module(m) for m in initrd_modules),
        initramfs_error=initrd_error,
        fstab=located.fstab,
        nics=_network(tree),
        eth_names="net.ifnames=0" in boot.cmdline,
        agents=agents,
        init_system=_init_system(g, tree),
        checksums=_checksums(g, tree, kernel),
        initramfs_tool=tool,
        efi_loaders=efi,
        esp_grub_configs=esp_configs,
        serial_console=bool(re.search(r"(?:^|\s)console=ttyS", boot.cmdline)),
        mounts=located.mounts,
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
