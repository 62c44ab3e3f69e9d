"""What this host must have before any disk is judged: a host problem is never a verdict on a VM.

``check_host`` raises ``LabUnavailable`` (exit 3) naming what is missing: the python guestfs
binding, ``qemu-img``, ``qemu-system-x86_64``, or a qemu that can run TCG at all.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess

from virtproof.core.errors import LabUnavailable
from virtproof.lab.qemu.process import QEMU
from virtproof.premigrate.gfs import guestfs_environment


def _tcg_works() -> str | None:
    """None if ``qemu-system-x86_64 -accel tcg`` starts (a machine-less qemu that quits at once)."""
    try:
        proc = subprocess.run(
            [QEMU, "-accel", "tcg", "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "stdio"],
            input="quit\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return None


def check_host(*, need_boot: bool = True) -> None:
    guestfs_environment()
    missing: list[str] = []
    try:
        importlib.import_module("guestfs")
    except ImportError:
        missing.append("the python guestfs binding (apt-get install python3-guestfs; scripts/link-guestfs)")
    if shutil.which("qemu-img") is None:
        missing.append("qemu-img (apt-get install qemu-utils)")
    if need_boot:
        if shutil.which(QEMU) is None:
            missing.append(f"{QEMU} (apt-get install qemu-system-x86)")
        else:
            problem = _tcg_works()
            if problem:
                missing.append(f"a working TCG in {QEMU}: {problem}")
    if missing:
        raise LabUnavailable("premigrate cannot run on this host: missing " + "; ".join(missing))
