"""benchmarks/repro_tcg_migration.py, the bare-qemu reproducer of qemu-tcg-dirty-bitmap, run short.

The padded guest (256 MiB + 8 KiB, the lab's work-around) must move intact: every move verified,
0 bad pages, no kernel trouble. On an affected qemu (< 9.0; the reproducer is TCG only) the
unpadded guest (256 MiB exactly) must be found corrupted: measured 4 of 4 at its first move with
the script's defaults (a kernel panic/oops, or bad pages), so one run of two moves is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from virtproof.lab.images.micro import GuestImage
from virtproof.lab.qemu.defects import tcg_loses_dirty_pages

pytestmark = [pytest.mark.qemu]

ROOT = Path(__file__).resolve().parent.parent


def _repro(tmp_path: Path, image: GuestImage, *args: str) -> dict[str, Any]:
    assert image.kernel is not None and image.initrd is not None
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its work directory, to check it is removed
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/repro_tcg_migration.py"), "--kernel", str(image.kernel),
         "--initrd", str(image.initrd), "--json", *args],
        capture_output=True, text=True, timeout=600, check=False, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    left = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True, check=False).stdout
    assert left.strip() == "", f"qemu left behind: {left}"
    assert list(tmp_path.iterdir()) == [], "the reproducer's work directory was not removed"
    return doc


def test_repro(tmp_path: Path, micro_image: GuestImage) -> None:
    """Padded: intact; unpadded: corrupted on an affected qemu (the short name keeps tmp_path, and
    the QMP unix socket paths under it, within 108 bytes)."""
    doc = _repro(tmp_path, micro_image, "--moves", "2")
    assert doc["qemu_version"].startswith("QEMU emulator version") and doc["accel"] == "tcg"
    by = {r["config"]: r for r in doc["results"]}
    padded, unpadded = by["padded"], by["unpadded"]
    assert padded["ram_kib"] == 256 * 1024 + 8 and unpadded["ram_kib"] == 256 * 1024
    # padded: both moves completed, each verified (a report read back), nothing found
    assert padded["error"] is None and padded["bad_before"] == 0
    assert len(padded["moves"]) == 2 and all(m["broken"] is None for m in padded["moves"])
    assert all(m["transferred_mib"] > 32 and m["dirty_syncs"] >= 2 for m in padded["moves"]), padded["moves"]
    assert padded["bad_pages"] == 0 and padded["kernel_trouble"] == [] and not padded["corrupted"]
    assert unpadded["error"] is None and unpadded["bad_before"] == 0 and unpadded["moves"]
    if tcg_loses_dirty_pages(doc["qemu_version"]):
        assert unpadded["corrupted"], unpadded  # bad pages, a broken guest or an oops on its console
    else:
        assert not unpadded["corrupted"], unpadded  # a fixed qemu (9.0+): both intact
