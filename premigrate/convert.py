"""Conversion: ``qemu-img convert`` to the target format with its throughput, a bare
``qemu-img convert`` of the same file as the yardstick, and ``virt-v2v -o local``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from virtproof.premigrate.gfs import guestfs_environment

MIB = 1024 * 1024


class ConversionError(RuntimeError):
    """qemu-img or virt-v2v failed; the message carries the tool's last error line."""


@dataclass(frozen=True)
class Conversion:
    output: Path
    format: str
    seconds: float
    virtual_mib: float

    @property
    def mib_per_s(self) -> float:
        return self.virtual_mib / self.seconds if self.seconds > 0 else 0.0


def convert_argv(src: Path, src_fmt: str, dst: Path, dst_fmt: str) -> list[str]:
    """Ours and the yardstick alike (like for like: the same flags, formats and file).
    -W: out-of-order writes; -U: do not take the source's lock (opened read-only anyway)."""
    return ["qemu-img", "convert", "-U", "-W", "-f", src_fmt, "-O", dst_fmt, str(src), str(dst)]


_RUNNING: set[subprocess.Popen[str]] = set()
_RUNNING_LOCK = threading.Lock()


def kill_running_tools() -> int:
    """SIGKILL every qemu-img / virt-v2v we started that still runs, with its process group
    (virt-v2v's appliance and qemu-nbd); for signal handlers. Returns how many."""
    with _RUNNING_LOCK:
        procs = [p for p in _RUNNING if p.poll() is None]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return len(procs)


def _run(argv: list[str], what: str, timeout: float) -> float:
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ConversionError(f"{what} did not finish within {timeout:.0f} s") from None
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    if proc.returncode < 0:
        raise ConversionError(f"{what} was killed (signal {-proc.returncode})")
    if proc.returncode != 0:
        lines = (stderr.strip() or stdout.strip()).splitlines() or ["(no output)"]
        errors = [line.strip() for line in lines if "error:" in line] or lines[-1:]
        raise ConversionError(f"{what} failed: {errors[0]}")
    return time.monotonic() - started


def qemu_img_convert(
    src: Path, src_fmt: str, dst: Path, dst_fmt: str, virtual_size: int, timeout: float = 1800
) -> Conversion:
    seconds = _run(convert_argv(src, src_fmt, dst, dst_fmt), "qemu-img convert", timeout)
    return Conversion(dst, dst_fmt, seconds, virtual_size / MIB)


def bare_convert_seconds(src: Path, src_fmt: str, dst_fmt: str, scratch: Path, timeout: float = 1800) -> float:
    """The yardstick: the same ``qemu-img convert`` command (``convert_argv``), run plainly to a
    scratch file, then removed."""
    out = scratch / f"bare.{dst_fmt}"
    try:
        return _run(convert_argv(src, src_fmt, out, dst_fmt), "bare qemu-img convert", timeout)
    finally:
        out.unlink(missing_ok=True)


def virt_v2v_local(
    source: Path, kind: str, outdir: Path, name: str, timeout: float = 1800, input_format: str | None = None
) -> tuple[Path, float]:
    """``virt-v2v -i disk|ova SOURCE -o local -of qcow2``; returns the converted disk and seconds.
    With ``-i disk`` the input format is given (``-if``), never probed."""
    if shutil.which("virt-v2v") is None:
        raise ConversionError("virt-v2v is not installed (apt-get install virt-v2v nbdkit libnbd-bin)")
    guestfs_environment()
    argv = ["virt-v2v", "-i", kind, *(["-if", input_format] if kind == "disk" and input_format else []), str(source)]
    argv += ["-o", "local", "-os", str(outdir), "-of", "qcow2", "-on", name]
    seconds = _run(argv, "virt-v2v", timeout)
    disk = outdir / f"{name}-sda"
    if not disk.exists():
        raise ConversionError(f"virt-v2v wrote no {disk.name} in {outdir}")
    return disk, seconds
