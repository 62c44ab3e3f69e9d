"""Where a boot is, told from outside the guest: the serial console, the screen (VGA text or a
frame), the boot probe's lines and the SSH banner. Pure functions over what was seen.

Stages, in order: ``firmware`` (SeaBIOS/OVMF drew something), ``bootloader`` (GRUB or
extlinux), ``kernel`` (Linux started: its banner, or the initramfs talking), ``userspace`` (the
root file system mounted, init running), ``network`` (the probe saw an address), ``sshd`` (an
``SSH-`` banner from outside). A later stage implies the earlier ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STAGES = ("firmware", "bootloader", "kernel", "userspace", "network", "sshd")

FIRMWARE = re.compile(r"SeaBIOS \(version|iPXE|Booting from (Hard Disk|DVD|Floppy)|BdsDxe|TianoCore|UEFI Interactive")
BOOTLOADER = re.compile(
    r"GNU GRUB|Welcome to GRUB|Booting `|Loading Linux|Loading initial ramdisk|SYSLINUX \d|EXTLINUX \d|grub>"
)
KERNEL = re.compile(
    r"Linux version \S+|^\[\s*\d+\.\d+\] |Loading, please wait|Begin: Loading essential drivers|\(initramfs\)"
    r"|EFI stub: "
    r"|virtproof: root ",
    re.M,
)
USERSPACE = re.compile(
    r"EXT4-fs \(\w+\): mounted filesystem|XFS \(\S+\): Ending clean mount|virtproof: root \S+ mounted"
    r"|VFS: Mounted root|Reached target.*Local File Systems|Welcome to .*Linux|\S+ login: ?$|virtproof: ready"
    r"|VIRTPROOF-PROBE begin",
    re.M,
)
LOGIN = re.compile(r"\S+ login: ?$|virtproof: ready", re.M)
# Most telling first: the first pattern that matches anywhere names the failure.
FAILURE_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"ALERT! .* does not exist",
        r"Kernel panic[^\n]*",
        r"virtproof: root device \S+ not found",
        r"You are in emergency mode",
        r"Unable to mount root[^\n]*",
        r"No init found",
        r"grub rescue>",
        r"error: (no such device|file `[^']*' not found|unknown filesystem)[^\n]*",
        r"BdsDxe: failed to load[^\n]*",
        r"No bootable option or device was found",
        r"No bootable device",
        r"Boot failed: could not read the boot disk",
        r"Loading \S+\.\.\. failed",
        r"Gave up waiting for root[^\n]*",
        r"Dropping to a shell",
    )
)
FAILURES = re.compile("|".join(p.pattern for p in FAILURE_PATTERNS))


@dataclass(frozen=True)
class Seen:
    """Everything observed so far (texts are cumulative; frames are summarised)."""

    console: str = ""
    screen_text: str = ""  # all VGA text screens read, joined
    frame_drawn: bool = False  # some frame was not blank
    graphics_frame: bool = False  # some non-blank frame was not in text mode (GRUB gfxterm)
    probe_begun: bool = False
    network: bool = False
    ssh: bool = False


def stages(seen: Seen) -> list[str]:
    """The stages reached (a later one implies the earlier)."""
    text = seen.console + "\n" + seen.screen_text
    reached = {
        "firmware": seen.frame_drawn or bool(FIRMWARE.search(text)),
        "bootloader": bool(BOOTLOADER.search(text)) or (seen.graphics_frame and seen.frame_drawn),
        "kernel": bool(KERNEL.search(text)),
        "userspace": bool(USERSPACE.search(text)) or seen.probe_begun,
        "network": seen.network,
        "sshd": seen.ssh,
    }
    last = max((i for i, s in enumerate(STAGES) if reached[s]), default=-1)
    return list(STAGES[: last + 1])


def failure(seen: Seen) -> str | None:
    for pattern in FAILURE_PATTERNS:
        match = pattern.search(seen.console) or pattern.search(seen.screen_text)
        if match:
            return match.group(0).strip()
    return None


def where_stopped(seen: Seen, booted_fully: bool) -> str:
    """One line: the last stage reached and what failed there, for a report."""
    reached = stages(seen)
    if booted_fully:
        return f"reached {reached[-1] if reached else 'nothing'}"
    last = reached[-1] if reached else None
    nxt = STAGES[len(reached)] if len(reached) < len(STAGES) else None
    problem = failure(seen)
    text = f"stopped in {last}" if last else "nothing on the console or the screen (qemu or the firmware)"
    if nxt and last:
        text += f" (never reached {nxt})"
    return text + (f": {problem}" if problem else "")
