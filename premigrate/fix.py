"""Targeted fixes on a copy of the converted disk (never on the source).

- initramfs: add the virtio drivers and rebuild it natively in a chroot of the guest's files
  (seconds, against minutes inside the TCG appliance). This runs the guest's own
  ``mkinitramfs``/``dracut`` on the host as root, in new network and PID namespaces: use
  ``--fix-method v2v`` for images you do not trust;
- fstab and the boot loader's ``root=``: ``/dev/sdX`` becomes ``UUID=...``;
- network configs pinned to an old interface name: also match the virtio NIC;
- udev persistent-net rules naming NICs by MAC: disabled.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtproof.premigrate.checks import disk_driver
from virtproof.premigrate.gfs import open_guestfs
from virtproof.premigrate.inspect import GuestFacts
from virtproof.premigrate.netconfig import TARGET_NIC_NAMES

VIRTIO_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "sd_mod")
TAR_EXCLUDES = [
    "./usr/share/doc/*",
    "./usr/share/man/*",
    "./usr/share/locale/*",
    "./usr/share/info/*",
    "./usr/share/zoneinfo/*",
    "./var/cache/*",
    "./var/log/*",
    "./home/*",
    "./srv/*",
    "./root/*",
    "./tmp/*",
    "./proc/*",
    "./sys/*",
    "./dev/*",
    "./run/*",
    "./boot/vmlinu*",
    "./boot/initrd*",
    "./boot/initramfs*",
    "./var/lib/apt/lists/*",
    "./usr/lib/firmware/*",
    "./lib/firmware/*",
]
# Disk names that depend on the bus: /dev/sdX, hdX, xvdX, and vdX (virt-v2v rewrites sdX to vdX,
# which holds only while the disk stays on virtio-blk): all become UUID=.
_OLD_DISK = re.compile(r"(?<![\w/])/dev/(?:sd|hd|xvd|vd)([a-z])(\d*)\b")


class FixError(RuntimeError):
    """A fix could not be applied (the message names which)."""


@dataclass(frozen=True)
class FixReport:
    applied: tuple[str, ...]  # human-readable, one line per change
    resolved: frozenset[str]  # finding codes these changes resolve
    seconds: float


def _appliance_device(guest_dev: str) -> str:
    match = re.match(r"/dev/(?:sd|hd|xvd|vd)([a-z])(\d*)$", guest_dev)
    return f"/dev/sd{match.group(1)}{match.group(2)}" if match else guest_dev


def _uuid_for(g: Any, guest_dev: str) -> str | None:
    try:
        uuid = str(g.vfs_uuid(_appliance_device(guest_dev)))
    except RuntimeError:
        return None
    return uuid or None


def _replace_disk_names(g: Any, text: str) -> tuple[str, list[str]]:
    changes: list[str] = []

    def sub(match: re.Match[str]) -> str:
        dev = match.group(0)
        uuid = _uuid_for(g, dev)
        if uuid is None:
            return dev
        changes.append(f"{dev} -> UUID={uuid}")
        return f"UUID={uuid}"

    return _OLD_DISK.sub(sub, text), changes


def _fix_fstab_and_bootloader(g: Any, facts: GuestFacts, applied: list[str], resolved: set[str]) -> None:
    if g.is_file("/etc/fstab"):
        text, changes = _replace_disk_names(g, bytes(g.read_file("/etc/fstab")).decode())
        if changes:
            g.write("/etc/fstab", text.encode())
            applied.append(f"/etc/fstab: {', '.join(changes)}")
            resolved.add("fstab-device-name")
    config = facts.boot.config_path
    if config and g.is_file(config):
        original = bytes(g.read_file(config)).decode()
        text = re.sub(r"root=(/dev/\S+)", lambda m: "root=" + _replace_disk_names(g, m.group(1))[0], original)
        if text != original:
            g.write(config, text.encode())
            applied.append(f"{config}: root= by UUID")
            resolved.add("bootloader-device-name")


def _fix_network(g: Any, facts: GuestFacts, applied: list[str], resolved: set[str]) -> None:
    target = TARGET_NIC_NAMES[0]
    for nic in facts.nics:
        if nic.name is None or nic.matches_target(facts.eth_names) or not g.is_file(nic.path):
            continue
        text = bytes(g.read_file(nic.path)).decode()
        old = nic.name.split()[0]
        if nic.tool == "networkd":
            new = re.sub(r"^(\s*Name\s*=\s*)(.*)$", r"\1\2 en* eth*", text, count=1, flags=re.M)
        elif nic.tool == "networkmanager":
            new = re.sub(r"^\s*interface-name\s*=.*\n?", "", text, flags=re.M)
        else:  # ifupdown, netplan, ifcfg: rename to the name the first virtio NIC gets
            new = re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", target, text)
            if nic.tool == "ifcfg":
                new = re.sub(r"^\s*HWADDR=.*\n?", "", new, flags=re.M)
        if new != text:
            g.write(nic.path, new.encode())
            applied.append(f"{nic.path}: {nic.tool} config for {old!r} now matches the virtio NIC")
            resolved.add("network-name-pinned")
    for nic in facts.nics:
        if nic.mac is None or nic.name is not None or not g.is_file(nic.path):
            continue
        if nic.tool in ("udev", "networkd-link"):
            g.mv(nic.path, nic.path + ".virtproof-disabled")
            applied.append(f"{nic.path}: rename by MAC {nic.mac} disabled")
            resolved.add("network-mac-bound")
            continue
        text = bytes(g.read_file(nic.path)).decode()
        if nic.tool == "networkd":
            new = re.sub(r"^\s*MACAddress\s*=.*$", "Name=en* eth*", text, count=1, flags=re.M | re.I)
        elif nic.tool == "netplan":
            new = re.sub(r"^(\s*)macaddress:\s*\S+\s*$", r'\1name: "en*"', text, count=1, flags=re.M | re.I)
        elif nic.tool == "networkmanager":
            new = re.sub(r"^\s*mac-address\s*=.*\n?", "", text, flags=re.M)
        elif nic.tool == "ifcfg":
            new = re.sub(r"^\s*HWADDR=.*\n?", "", text, flags=re.M)
        else:
            continue
        if new != text:
            g.write(nic.path, new.encode())
            applied.append(f"{nic.path}: {nic.tool} config matched MAC {nic.mac}, now the virtio NIC by name")
            resolved.add("network-mac-bound")


def _chroot_run(tree: Path, argv: list[str]) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
    cmd = ["unshare", "--net", "--pid", "--fork", "chroot", str(tree), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-400:]
        raise FixError(f"{' '.join(argv[:2])} in the guest chroot failed: {tail}")


def _rebuild_initramfs(
    g: Any, facts: GuestFacts, bus: str, workdir: Path, applied: list[str], resolved: set[str]
) -> None:
    kver, initrd = facts.kernel_version, facts.initramfs_path
    if not kver or not initrd:
        raise FixError("cannot rebuild the initramfs: kernel version or initramfs path unknown")
    if facts.arch not in ("x86_64", "amd64") or os.uname().machine != "x86_64":
        raise FixError(f"native initramfs rebuild needs an x86_64 guest and host (guest is {facts.arch})")
    modules = [m for m in VIRTIO_MODULES]
    tree = workdir / "initramfs-root"
    tree.mkdir()
    archive = workdir / "initramfs-root.tar"
    g.tar_out("/", str(archive), excludes=TAR_EXCLUDES)
    try:
        subprocess.run(
            ["tar", "-xpf", str(archive), "-C", str(tree), "--numeric-owner"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except subprocess.CalledProcessError as exc:
        raise FixError(f"unpacking the guest's files failed: {exc.stderr.decode()[-300:]}") from None
    finally:
        archive.unlink()
    for d in ("proc", "sys", "dev", "tmp", "run", "var/tmp", "boot"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    os.chmod(tree / "tmp", 0o1777)
    out_name = "/tmp/virtproof-initrd.img"
    if facts.initramfs_tool == "initramfs-tools":
        listing = "/etc/initramfs-tools/modules"
        current = bytes(g.read_file(listing)).decode() if g.is_file(listing) else ""
        missing = [m for m in modules if not re.search(rf"^{m}\b", current, re.M)]
        text = current.rstrip("\n") + "\n" + "".join(f"{m}\n" for m in missing)
        (tree / listing.lstrip("/")).write_text(text)
        _chroot_run(tree, ["mkinitramfs", "-o", out_name, kver])
        g.write(listing, text.encode())
    elif facts.initramfs_tool == "dracut":
        conf = "/etc/dracut.conf.d/90-virtproof-virtio.conf"
        text = f'add_drivers+=" {" ".join(modules)} "\n'
        (tree / conf.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tree / conf.lstrip("/")).write_text(text)
        _chroot_run(tree, ["dracut", "--force", "--no-hostonly", out_name, kver])
        g.mkdir_p("/etc/dracut.conf.d")
        g.write(conf, text.encode())
    else:
        raise FixError("no initramfs tool (initramfs-tools or dracut) in the guest")
    g.upload(str(tree / out_name.lstrip("/")), initrd)
    applied.append(f"{initrd}: rebuilt natively with {', '.join(modules)} ({facts.initramfs_tool})")
    resolved.update({f"initramfs-missing-{m}" for m in ("virtio_pci", disk_driver("virtio"), disk_driver("scsi"))})
    del bus


def prepare_for_virt_v2v(disk: Path, fmt: str, facts: GuestFacts) -> tuple[str, ...]:
    """What virt-v2v needs and does not do itself, done on the copy it converts. On UEFI, virt-v2v
    (2.2, and upstream since) looks for GRUB's configuration only under /boot/efi/EFI
    (convert/linux_bootloaders.ml) and stops with "no bootloader detected" when GRUB was
    installed without one there (grub-install without Debian's signed GRUB packages): the ESP gets
    the stub those packages put there, which reads the real configuration (virt-v2v then writes
    its grub-mkconfig output over it; GRUB itself reads the configuration its image names)."""
    if facts.firmware != "uefi" or facts.boot.loader != "grub" or facts.esp_grub_configs or not facts.boot.config_path:
        return ()
    mounts = {m.mountpoint: m for m in facts.mounts}
    esp = mounts.get("/boot/efi")
    holder = (
        mounts.get("/boot") if facts.boot.config_path.startswith("/boot/") and "/boot" in mounts else mounts.get("/")
    )
    if esp is None or holder is None:
        return ()  # virt-v2v says what it misses
    grub_dir = next(
        (
            p.rsplit("/", 1)[0]
            for p in facts.efi_loaders
            if p.lower().endswith("/grubx64.efi") and not p.upper().startswith("EFI/BOOT/")
        ),
        "EFI/BOOT",
    )
    prefix = facts.boot.config_path.rsplit("/", 1)[0]
    if holder.mountpoint != "/":
        prefix = prefix.removeprefix(holder.mountpoint) or "/"
    with open_guestfs([(disk, fmt, False)]) as g:
        uuid = str(g.vfs_uuid(holder.device))
        if not uuid:
            raise FixError(f"{holder.device} has no UUID for GRUB's search")
        g.mount(esp.device, "/")
        g.mkdir_p(f"/{grub_dir}")
        stub = f"search.fs_uuid {uuid} root\nset prefix=($root)'{prefix}'\nconfigfile $prefix/grub.cfg\n"
        g.write(f"/{grub_dir}/grub.cfg", stub.encode())
        g.umount_all()
    return (f"/boot/efi/{grub_dir}/grub.cfg: GRUB stub reading {facts.boot.config_path}, for virt-v2v to find GRUB",)


def apply_fixes(
    disk: Path, fmt: str, facts: GuestFacts, codes: set[str], bus: str, workdir: Path, *, initramfs: bool = True
) -> FixReport:
    """Fix what ``codes`` (finding codes) call for, in place on ``disk`` (a copy)."""
    started = time.monotonic()
    applied: list[str] = []
    resolved: set[str] = set()
    with open_guestfs([(disk, fmt, False)]) as g:
        g.mount(facts.root_device, "/")
        for entry in facts.fstab:
            if entry.mountpoint == "/boot" and entry.spec.startswith(("UUID=", "LABEL=", "/dev/")):
                spec = entry.spec
                dev = (
                    str(g.findfs_uuid(spec[5:]))
                    if spec.startswith("UUID=")
                    else str(g.findfs_label(spec[6:]))
                    if spec.startswith("LABEL=")
                    else _appliance_device(spec)
                )
                g.mount(dev, "/boot")
        if codes & {"fstab-device-name", "bootloader-device-name"}:
            _fix_fstab_and_bootloader(g, facts, applied, resolved)
        if codes & {"network-name-pinned", "network-mac-bound"}:
            _fix_network(g, facts, applied, resolved)
        if initramfs and any(c.startswith("initramfs-missing-") for c in codes):
            _rebuild_initramfs(g, facts, bus, workdir, applied, resolved)
        g.umount_all()
    return FixReport(tuple(applied), frozenset(resolved), time.monotonic() - started)
