"""Choosing the accelerator by booting a probe guest, never by the existence of /dev/kvm.

On nested hosts /dev/kvm opens but guests hang after the BIOS; only a real boot tells. The
verdict is cached per host boot and qemu version in the state root, so each run does not pay
for a probe that times out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from virtproof.core.processes import boot_id
from virtproof.core.statedir import state_root
from virtproof.lab.images.micro import GuestImage
from virtproof.lab.qemu.process import QEMU, QemuConfig, build_argv

READY_MARK = "virtproof: ready"
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class AccelChoice:
    accel: Literal["kvm", "tcg"]
    reason: str


def qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=False, timeout=10).stdout
    except FileNotFoundError:
        return ""
    return out.splitlines()[0] if out else ""


def probe_kvm(image: GuestImage, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Boot ``image`` under KVM; (True, how long) if it reaches /init's ready mark in time."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="virtproof-kvm-probe-") as tmp:
        cfg = QemuConfig(
            guest_name="vp-kvm-probe",
            directory=Path(tmp),
            memory_mib=128,
            accel="kvm",
            kernel=image.kernel,
            initrd=image.initrd,
            append="console=ttyS0 quiet vp.name=probe",
            rng=True,
        )
        argv = [a for a in build_argv(cfg) if a != "-S"]
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            while time.monotonic() - start < timeout:
                if proc.poll() is not None:
                    err = (proc.stderr.read().decode(errors="replace") if proc.stderr else "").strip()
                    return False, f"qemu exited under KVM: {err.splitlines()[-1] if err else proc.returncode}"
                if cfg.console_log.exists() and READY_MARK in cfg.console_log.read_text(errors="replace"):
                    return True, f"a probe guest booted under KVM in {time.monotonic() - start:.1f} s"
                time.sleep(0.1)
            return False, f"a probe guest did not boot under KVM within {timeout:.0f} s"
        finally:
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()


def choose_accel(requested: Literal["auto", "kvm", "tcg"], image: GuestImage) -> AccelChoice:
    """``tcg`` as asked; ``kvm`` only if it boots (else raise); ``auto`` whatever boots."""
    if requested == "tcg":
        return AccelChoice("tcg", "tcg requested by the scenario")
    cache = state_root() / "accel-probe.json"
    key = f"{boot_id()}|{qemu_version()}|{image.digest}"
    ok, why = None, ""
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            ok, why = bool(cached["kvm"]), str(cached["reason"]) + " (cached for this host boot)"
    except (OSError, ValueError, KeyError):
        pass
    if ok is None:
        ok, why = probe_kvm(image)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "kvm": ok, "reason": why}))
        os.replace(tmp, cache)
    if ok:
        return AccelChoice("kvm", why)
    if requested == "kvm":
        raise RuntimeError(f"accel: kvm requested but {why}")
    return AccelChoice("tcg", f"auto chose tcg: {why}")


def qemu_available() -> str | None:
    """None if qemu is installed, else what is missing."""
    return None if shutil.which(QEMU) else f"{QEMU} is not installed (apt-get install qemu-system-x86)"
