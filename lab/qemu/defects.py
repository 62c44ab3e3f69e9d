"""Known qemu defects that break the lab's guests, how they are detected and worked around.

**qemu-tcg-dirty-bitmap**: QEMU before 9.0 loses guest memory writes during TCG live migration.
The fast path of ``cpu_physical_memory_sync_dirty_bitmap()`` (``include/exec/ram_addr.h``),
taken for a RAM block whose start and size are multiples of 64 pages (256 KiB, so every
``-m <N>M`` guest), clears the migration dirty bits 64 pages at a time without resetting the TCG
TLB's dirty state; later guest stores through a TLB entry that is still "dirty" are not recorded,
the page is not sent again, and the destination resumes with a stale copy (the guest kernel then
oopses, panics or stalls; user pages are hit too). Fixed upstream by commit
03bfc2188f061aa8381403f9280555f4e22c35a2 "physmem: Fix migration dirty bitmap coherency with
TCG memory access" (QEMU 9.0; ``Fixes: aa8dc044772``, 2017). Debian 12's 7.2 does not carry it.
KVM tracks dirty pages differently and is not affected.

Work-around: give the guest 8 KiB more RAM (``-m <N*1024+8>K``; qemu rounds -m to 8 KiB), so the
main RAM block is not a multiple of 64 pages and qemu syncs it page by page on the slow path,
which does reset the TLB. It costs the guest 8 KiB and makes each dirty sync walk RAM page by
page. Applied only under TCG on a qemu older than 9.0 (or whose version cannot be read); both
ends of a migration get it, since the destination is the source's config with a new directory.
``benchmarks/repro_tcg_migration.py`` reproduces the defect without virtproof.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

TCG_DIRTY_BITMAP = "qemu-tcg-dirty-bitmap"
TCG_DIRTY_BITMAP_FIXED_IN = (9, 0)
TCG_DIRTY_BITMAP_COMMIT = "03bfc2188f061aa8381403f9280555f4e22c35a2"
TCG_DIRTY_SYNC_PAD_KIB = 8  # qemu's -m granularity: the smallest pad that leaves the 64-page fast path
WorkaroundSetting = Literal["auto", "off"]


def parse_qemu_version(line: str) -> tuple[int, int, int] | None:
    """(major, minor, micro) from ``qemu-system-x86_64 --version``'s first line; None if unreadable."""
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", line)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def tcg_loses_dirty_pages(version_line: str) -> bool:
    """True for a qemu whose TCG migrations lose dirty pages: before 9.0, or a version we cannot read."""
    version = parse_qemu_version(version_line)
    return version is None or version[:2] < TCG_DIRTY_BITMAP_FIXED_IN


@dataclass(frozen=True)
class TcgDirtyBitmapDecision:
    """Whether this lab pads guest RAM, and why (recorded in the run manifest's lab facts)."""

    affected: bool  # guests of this lab would hit the defect without the work-around
    ram_pad_kib: int  # added to every guest's -m
    reason: str

    def fact(self, qemu_version: str) -> dict[str, object]:
        """The ``migration_defect`` lab fact (``virtproof.core.migration.MIGRATION_DEFECT_FACT``)."""
        return {
            "id": TCG_DIRTY_BITMAP,
            "affected": self.affected,
            "workaround_active": self.ram_pad_kib > 0,
            "ram_pad_kib": self.ram_pad_kib,
            "qemu_version": qemu_version,
            "fixed_in": f"QEMU {TCG_DIRTY_BITMAP_FIXED_IN[0]}.{TCG_DIRTY_BITMAP_FIXED_IN[1]} "
                        f"(commit {TCG_DIRTY_BITMAP_COMMIT[:10]})",
            "reason": self.reason,
        }


def decide_tcg_dirty_bitmap(
    accel: str, version_line: str, setting: WorkaroundSetting = "auto"
) -> TcgDirtyBitmapDecision:
    """The work-around for qemu-tcg-dirty-bitmap: pad under TCG on qemu < 9.0, unless turned off."""
    shown = version_line or "an unknown qemu version"
    if accel == "kvm":
        return TcgDirtyBitmapDecision(False, 0, "KVM tracks dirty pages itself: not affected")
    if not tcg_loses_dirty_pages(version_line):
        return TcgDirtyBitmapDecision(False, 0, f"{shown} has the fix (QEMU 9.0+): no work-around needed")
    if setting == "off":
        return TcgDirtyBitmapDecision(
            True, 0, f"{shown} under TCG loses dirty pages in migrations; work-around turned off by the scenario "
                     "(lab.tcg_migration_workaround: off): migrated guests may be corrupted"
        )  # fmt: skip
    return TcgDirtyBitmapDecision(
        True, TCG_DIRTY_SYNC_PAD_KIB, f"{shown} under TCG loses dirty pages in migrations (fixed in QEMU 9.0): "
                                      f"guest RAM padded by {TCG_DIRTY_SYNC_PAD_KIB} KiB to avoid the fast path"
    )  # fmt: skip
